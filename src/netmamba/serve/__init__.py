"""The online service (`netmamba serve`): live capture or replay -> flow table -> batched
inference in a worker process -> results store -> HTTP API and dashboard.

    service.py       the pipeline and its interfaces (PacketSource, FlowTable, ModelSpec)
    flowtable.py     the flow table: netmamba.flows.FlowMeter with the model's flow settings
    model.py         the checkpoint as the packet process sees it (no torch), and the
                     worker's predict (netmamba.inference.Predictor)
    replay.py        capture files, folders and standard input at a chosen pace
    batcher.py       dynamic batching in a worker process, bounded queues, drops counted
    store.py         the results-store interface; sqlite_store.py (default), redis_store.py
    metrics.py       Prometheus counters and histograms, throughput history
    api.py           FastAPI endpoints; static/index.html is the dashboard
    options.py       the command-line options of `netmamba serve`

Live capture itself is `netmamba.capture.live`.
"""
