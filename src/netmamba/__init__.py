"""netmamba: NetMamba+ traffic classification from packet captures.

Data flow: capture -> flows -> features -> dataset -> model -> train/evaluate -> classify/serve.
"""

__version__ = "0.1.0"
