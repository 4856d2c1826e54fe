/* Packet kernels for `netmamba prepare`: pcap record walking, thin header parsing, de-biasing.
 *
 * Each function has a pure-Python twin with identical results (netmamba/capture/pcap.py,
 * netmamba/capture/parse.py, netmamba/debias.py); the tests compare them on generated and
 * random input. Why native: per packet, Python spends ~2 us on record walking and header
 * parsing and ~5 us per stored packet on de-biasing, against ~1 us for merely reading a record;
 * here it is tens of nanoseconds. Every read is bounds-checked against the captured length:
 * any byte string is a valid input (fuzz-tested).
 *
 * The packet record `nm_packet` matches netmamba.capture.batch.PACKET_DTYPE (numpy, aligned).
 */
#include <stdint.h>
#include <string.h>

typedef struct {
    int64_t ts_ns;
    int64_t off;
    int32_t caplen;
    int32_t wirelen;
    int32_t linktype;
    int32_t ip_off;
    int32_t ip_len;
    int32_t l4_off;
    int32_t payload_off;
    int32_t payload_end;
    int32_t smac_off;
    int32_t dmac_off;
    uint32_t frag_id;
    uint16_t sport;
    uint16_t dport;
    uint8_t status;
    uint8_t version;
    uint8_t proto;
    uint8_t tcp_flags;
    uint8_t frag;
    uint8_t rev;
    uint8_t key[40];
} nm_packet;

int64_t nm_packet_size(void) { return (int64_t)sizeof(nm_packet); }

enum {
    ST_OK = 0,
    ST_TRUNCATED_LINK,
    ST_NOT_IP,
    ST_UNKNOWN_LINK,
    ST_TRUNCATED_IP,
    ST_BAD_IP,
    ST_TRUNCATED_L4,
    ST_BAD_L4
};

#define MAX_TAGS 8

static inline uint32_t rd16(const uint8_t *p) { return ((uint32_t)p[0] << 8) | p[1]; }
static inline uint32_t rd32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint32_t rd32le(const uint8_t *p) {
    return ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | p[0];
}

/* ------------------------------------------------------------------------------------------ */
/* pcap record walking */

/* Walk classic pcap records in buf[0:len]. Fills ts_ns, off, caplen, wirelen, linktype of up
 * to max_out records and returns how many. *consumed: bytes of the complete records walked.
 * *error = 1 when a record claims a captured length above max_caplen (a corrupt file: the
 * caller stops there); 0 otherwise (the rest is an incomplete record: read more). */
int64_t nm_walk_pcap(const uint8_t *buf, int64_t len, int32_t swapped, int32_t nsec,
                     int32_t linktype, int64_t max_caplen, nm_packet *out, int64_t max_out,
                     int64_t *consumed, int32_t *error) {
    int64_t pos = 0, n = 0;
    *error = 0;
    while (n < max_out && pos + 16 <= len) {
        const uint8_t *h = buf + pos;
        uint32_t sec, frac, incl, orig;
        if (swapped) {
            sec = rd32(h); frac = rd32(h + 4); incl = rd32(h + 8); orig = rd32(h + 12);
        } else {
            sec = rd32le(h); frac = rd32le(h + 4); incl = rd32le(h + 8); orig = rd32le(h + 12);
        }
        if ((int64_t)incl > max_caplen) {
            *error = 1;
            break;
        }
        if (pos + 16 + (int64_t)incl > len) break;
        nm_packet *p = out + n;
        p->ts_ns = (int64_t)sec * 1000000000LL + (nsec ? (int64_t)frac : (int64_t)frac * 1000LL);
        p->off = pos + 16;
        p->caplen = (int32_t)incl;
        p->wirelen = orig > 0x7FFFFFFFu ? 0x7FFFFFFF : (int32_t)orig;
        p->linktype = linktype;
        pos += 16 + (int64_t)incl;
        n++;
    }
    *consumed = pos;
    return n;
}

/* ------------------------------------------------------------------------------------------ */
/* parsing: see netmamba/capture/parse.py for the meaning of every field */

typedef struct {
    int status, off, want, smac, dmac;
} link_result;

static link_result lr(int status, int off, int want, int smac, int dmac) {
    link_result r = {status, off, want, smac, dmac};
    return r;
}

static link_result ppp_protocol(uint32_t protocol, int off, int smac, int dmac) {
    if (protocol == 0x0021) return lr(ST_OK, off, 4, smac, dmac);
    if (protocol == 0x0057) return lr(ST_OK, off, 6, smac, dmac);
    return lr(ST_NOT_IP, 0, 0, smac, dmac);
}

static link_result ethertype(const uint8_t *f, int64_t n, uint32_t et, int64_t off, int smac,
                             int dmac) {
    int tags = 0;
    while (et == 0x8100 || et == 0x88A8 || et == 0x9100) {
        if (tags == MAX_TAGS) return lr(ST_NOT_IP, 0, 0, smac, dmac);
        if (n < off + 4) return lr(ST_TRUNCATED_LINK, 0, 0, smac, dmac);
        et = rd16(f + off + 2);
        off += 4;
        tags++;
    }
    if (et <= 1500) {
        if (n < off + 8) return lr(ST_TRUNCATED_LINK, 0, 0, smac, dmac);
        if (f[off] != 0xAA || f[off + 1] != 0xAA || f[off + 2] != 0x03)
            return lr(ST_NOT_IP, 0, 0, smac, dmac);
        et = rd16(f + off + 6);
        off += 8;
    }
    if (et == 0x0800) return lr(ST_OK, (int)off, 4, smac, dmac);
    if (et == 0x86DD) return lr(ST_OK, (int)off, 6, smac, dmac);
    if (et == 0x8847 || et == 0x8848) {
        for (int i = 0; i < MAX_TAGS; i++) {
            if (n < off + 4) return lr(ST_TRUNCATED_LINK, 0, 0, smac, dmac);
            int bottom = f[off + 2] & 1;
            off += 4;
            if (bottom) {
                if (n <= off) return lr(ST_TRUNCATED_LINK, 0, 0, smac, dmac);
                int version = f[off] >> 4;
                if (version == 4 || version == 6) return lr(ST_OK, (int)off, version, smac, dmac);
                return lr(ST_NOT_IP, 0, 0, smac, dmac);
            }
        }
        return lr(ST_NOT_IP, 0, 0, smac, dmac);
    }
    if (et == 0x8864) {
        if (n < off + 8) return lr(ST_TRUNCATED_LINK, 0, 0, smac, dmac);
        return ppp_protocol(rd16(f + off + 6), (int)off + 8, smac, dmac);
    }
    return lr(ST_NOT_IP, 0, 0, smac, dmac);
}

static link_result link_layer(const uint8_t *f, int64_t n, int32_t linktype) {
    switch (linktype) {
    case 1:
        if (n < 14) return lr(ST_TRUNCATED_LINK, 0, 0, -1, -1);
        return ethertype(f, n, rd16(f + 12), 14, 6, 0);
    case 101: case 12: case 14:
        return lr(ST_OK, 0, 0, -1, -1);
    case 228:
        return lr(ST_OK, 0, 4, -1, -1);
    case 229:
        return lr(ST_OK, 0, 6, -1, -1);
    case 113: {
        if (n < 16) return lr(ST_TRUNCATED_LINK, 0, 0, -1, -1);
        uint32_t halen = rd16(f + 4);
        return ethertype(f, n, rd16(f + 14), 16, halen == 6 ? 6 : -1, -1);
    }
    case 276:
        if (n < 20) return lr(ST_TRUNCATED_LINK, 0, 0, -1, -1);
        return ethertype(f, n, rd16(f), 20, f[11] == 6 ? 12 : -1, -1);
    case 0: case 108: {
        if (n < 4) return lr(ST_TRUNCATED_LINK, 0, 0, -1, -1);
        uint32_t family;
        if (linktype == 108) {
            family = rd32(f);
        } else {
            family = rd32le(f);
            if (family > 0xFFFF) family = rd32(f);
        }
        if (family == 2) return lr(ST_OK, 4, 4, -1, -1);
        if (family == 10 || family == 24 || family == 28 || family == 30)
            return lr(ST_OK, 4, 6, -1, -1);
        return lr(ST_NOT_IP, 0, 0, -1, -1);
    }
    case 9: case 50: {
        int off = (n >= 2 && f[0] == 0xFF && f[1] == 0x03) ? 2 : 0;
        if (n < off + 2) return lr(ST_TRUNCATED_LINK, 0, 0, -1, -1);
        return ppp_protocol(rd16(f + off), off + 2, -1, -1);
    }
    case 104:
        if (n < 4) return lr(ST_TRUNCATED_LINK, 0, 0, -1, -1);
        return ethertype(f, n, rd16(f + 2), 4, -1, -1);
    default:
        return lr(ST_UNKNOWN_LINK, 0, 0, -1, -1);
    }
}

static void fail(nm_packet *p, int status, int smac, int dmac) {
    p->status = (uint8_t)status;
    p->ip_off = -1;
    p->ip_len = 0;
    p->l4_off = -1;
    p->payload_off = -1;
    p->payload_end = -1;
    p->smac_off = smac;
    p->dmac_off = dmac;
    p->frag_id = 0;
    p->sport = p->dport = 0;
    p->version = p->proto = p->tcp_flags = p->frag = p->rev = 0;
    memset(p->key, 0, sizeof p->key);
}

static void make_key(nm_packet *p, const uint8_t *src, const uint8_t *dst, int alen) {
    uint8_t s[18], d[18];
    memset(s, 0, sizeof s);
    memset(d, 0, sizeof d);
    memcpy(s, src, (size_t)alen);
    memcpy(d, dst, (size_t)alen);
    s[16] = (uint8_t)(p->sport >> 8); s[17] = (uint8_t)p->sport;
    d[16] = (uint8_t)(p->dport >> 8); d[17] = (uint8_t)p->dport;
    int rev = memcmp(s, d, 18) > 0;
    const uint8_t *a = rev ? d : s, *b = rev ? s : d;
    p->rev = (uint8_t)rev;
    p->key[0] = (uint8_t)rev;
    p->key[1] = p->version;
    p->key[2] = p->proto;
    p->key[3] = 0;
    p->key[4] = a[16]; p->key[5] = a[17];
    p->key[6] = b[16]; p->key[7] = b[17];
    memcpy(p->key + 8, a, 16);
    memcpy(p->key + 24, b, 16);
}

static void parse_one(const uint8_t *f, int64_t n, nm_packet *p) {
    link_result L = link_layer(f, n, p->linktype);
    int smac = L.smac, dmac = L.dmac;
    if (L.status != ST_OK) { fail(p, L.status, smac, dmac); return; }
    int64_t off = L.off;
    if (n <= off) { fail(p, ST_TRUNCATED_IP, smac, dmac); return; }
    int version = f[off] >> 4;
    if ((version != 4 && version != 6) || (L.want && version != L.want)) {
        fail(p, ST_BAD_IP, smac, dmac);
        return;
    }
    int frag = 0;
    uint32_t frag_id = 0;
    int64_t ip_len, l4, end;
    int proto;
    const uint8_t *src, *dst;
    int alen;
    if (version == 4) {
        if (n < off + 20) { fail(p, ST_TRUNCATED_IP, smac, dmac); return; }
        int64_t ihl = (int64_t)(f[off] & 15) * 4;
        if (ihl < 20) { fail(p, ST_BAD_IP, smac, dmac); return; }
        if (n < off + ihl) { fail(p, ST_TRUNCATED_IP, smac, dmac); return; }
        ip_len = rd16(f + off + 2);
        if (ip_len == 0) ip_len = n - off;
        else if (ip_len < ihl) { fail(p, ST_BAD_IP, smac, dmac); return; }
        proto = f[off + 9];
        src = f + off + 12;
        dst = f + off + 16;
        alen = 4;
        uint32_t flags_offset = rd16(f + off + 6);
        if (flags_offset & 0x3FFF) {
            frag = (flags_offset & 0x1FFF) ? 2 : 1;
            frag_id = rd16(f + off + 4);
        }
        l4 = off + ihl;
        end = n < off + ip_len ? n : off + ip_len;
    } else {
        if (n < off + 40) { fail(p, ST_TRUNCATED_IP, smac, dmac); return; }
        ip_len = 40 + (int64_t)rd16(f + off + 4);
        proto = f[off + 6];
        if (ip_len == 40 && proto == 0) ip_len = n - off;
        src = f + off + 8;
        dst = f + off + 24;
        alen = 16;
        l4 = off + 40;
        end = n < off + ip_len ? n : off + ip_len;
        for (int i = 0; i < MAX_TAGS; i++) {
            if (proto == 0 || proto == 43 || proto == 60 || proto == 135 || proto == 139 ||
                proto == 140) {
                if (end < l4 + 2) { fail(p, ST_TRUNCATED_IP, smac, dmac); return; }
                int64_t next = l4 + ((int64_t)f[l4 + 1] + 1) * 8;
                proto = f[l4];
                l4 = next;
            } else if (proto == 51) {
                if (end < l4 + 2) { fail(p, ST_TRUNCATED_IP, smac, dmac); return; }
                int64_t next = l4 + ((int64_t)f[l4 + 1] + 2) * 4;
                proto = f[l4];
                l4 = next;
            } else if (proto == 44) {
                if (end < l4 + 8) { fail(p, ST_TRUNCATED_IP, smac, dmac); return; }
                uint32_t offset_more = rd16(f + l4 + 2);
                frag_id = rd32(f + l4 + 4);
                proto = f[l4];
                l4 += 8;
                if (offset_more & 0xFFF8) {
                    frag = 2;
                    break;
                }
                frag = (offset_more & 1) ? 1 : 0;
                if (!frag) frag_id = 0;
            } else {
                break;
            }
            if (l4 > end) { fail(p, ST_TRUNCATED_IP, smac, dmac); return; }
        }
    }
    uint32_t sport = 0, dport = 0, flags = 0;
    int64_t payload = l4;
    if (frag != 2) {
        if (proto == 6 || proto == 17 || proto == 136 || proto == 132) {
            int64_t need = proto == 6 ? 20 : proto == 132 ? 12 : 8;
            if (end < l4 + need) { fail(p, ST_TRUNCATED_L4, smac, dmac); return; }
            sport = rd16(f + l4);
            dport = rd16(f + l4 + 2);
            if (proto == 6) {
                int64_t doff = (int64_t)(f[l4 + 12] >> 4) * 4;
                if (doff < 20) { fail(p, ST_BAD_L4, smac, dmac); return; }
                flags = f[l4 + 13];
                payload = l4 + doff < end ? l4 + doff : end;
            } else {
                payload = l4 + need;
            }
        } else if (proto == 1 || proto == 58) {
            if (end < l4 + 8) { fail(p, ST_TRUNCATED_L4, smac, dmac); return; }
            payload = l4 + 8;
        }
    }
    p->status = ST_OK;
    p->ip_off = (int32_t)off;
    p->ip_len = (int32_t)ip_len;
    p->l4_off = (int32_t)l4;
    p->payload_off = (int32_t)payload;
    p->payload_end = (int32_t)(end > payload ? end : payload);
    p->smac_off = smac;
    p->dmac_off = dmac;
    p->frag_id = frag_id;
    p->sport = (uint16_t)sport;
    p->dport = (uint16_t)dport;
    p->version = (uint8_t)version;
    p->proto = (uint8_t)proto;
    p->tcp_flags = (uint8_t)flags;
    p->frag = (uint8_t)frag;
    make_key(p, src, dst, alen);
}

/* Parse n packets whose frames lie at buf[off : off + caplen] (clamped to buflen). */
void nm_parse(const uint8_t *buf, int64_t buflen, nm_packet *pkts, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        nm_packet *p = pkts + i;
        int64_t off = p->off, len = p->caplen;
        if (off < 0 || off > buflen) off = buflen;
        if (len < 0) len = 0;
        if (len > buflen - off) len = buflen - off;
        parse_one(buf + off, len, p);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* de-biasing: see netmamba/debias.py (the reference) for the meaning of every switch */

enum { KEEP = 0, ZERO = 1, RELATIVE = 2 };
enum {
    C_ADDR = 0, C_PORTS, C_SEQ, C_TSOPT, C_CHECKSUMS, C_TTL, C_IPID, C_FLOWLABEL, C_WINDOW,
    C_SNI, C_TLSRANDOM, C_TOS, C_COUNT
};

typedef struct {
    int have_seq, have_ack, have_tsval, have_tsecr;
    uint32_t seq, ack, tsval, tsecr;
} dir_state;

typedef struct {
    uint8_t *b;
    int64_t len; /* visible bytes of the region */
} region;

/* zero bytes [off, off+n) that lie inside the region */
static void zero(region r, int64_t off, int64_t n) {
    int64_t end = off + n < r.len ? off + n : r.len;
    for (int64_t i = off < 0 ? 0 : off; i < end; i++) r.b[i] = 0;
}

/* write the n-byte big-endian `value` at off, only the bytes inside the region */
static void put(region r, int64_t off, int n, uint32_t value) {
    for (int i = 0; i < n; i++) {
        int64_t at = off + i;
        if (at >= 0 && at < r.len) r.b[at] = (uint8_t)(value >> (8 * (n - 1 - i)));
    }
}

static int visible(region r, int64_t off, int64_t n) { return off >= 0 && off + n <= r.len; }

/* a 32-bit field made relative to the first value seen in this direction; when the field is
 * only partly visible it is zeroed (its value cannot be read) */
static void relative32(region r, int64_t off, int *have, uint32_t *base, int skip_zero) {
    if (!visible(r, off, 4)) { zero(r, off, 4); return; }
    uint32_t v = rd32(r.b + off);
    if (skip_zero && v == 0) return;
    if (!*have) { *have = 1; *base = v; }
    put(r, off, 4, v - *base);
}

static void transform32(region r, int64_t off, int mode, int *have, uint32_t *base, int skip0) {
    if (mode == ZERO) zero(r, off, 4);
    else if (mode == RELATIVE) relative32(r, off, have, base, skip0);
}

static void tls(region pl, const int32_t *cfg) {
    int64_t n = pl.len;
    const uint8_t *P = pl.b;
    if (n < 6 || P[0] != 0x16 || P[1] != 3) return;
    int hs = P[5];
    if (hs != 1 && hs != 2) return;
    int64_t p = 9 + 2;
    if (cfg[C_TLSRANDOM]) zero(pl, p, 32);
    p += 32;
    if (p >= n) return;
    int64_t sid = P[p];
    if (cfg[C_TLSRANDOM]) zero(pl, p + 1, sid);
    p += 1 + sid;
    if (hs != 1 || !cfg[C_SNI]) return;
    if (p + 2 > n) return;
    p += 2 + rd16(P + p);
    if (p + 1 > n) return;
    p += 1 + P[p];
    if (p + 2 > n) return;
    int64_t ext_end = p + 2 + rd16(P + p);
    p += 2;
    while (p + 4 <= n && p + 4 <= ext_end) {
        uint32_t type = rd16(P + p), elen = rd16(P + p + 2);
        p += 4;
        if (type == 0) {
            int64_t q = p, end = p + elen;
            if (q + 2 <= n) {
                int64_t list_end = q + 2 + rd16(P + q);
                if (list_end > end) list_end = end;
                q += 2;
                while (q + 3 <= n && q + 3 <= list_end) {
                    int64_t nlen = rd16(P + q + 1);
                    q += 3;
                    zero(pl, q, nlen);
                    q += nlen;
                }
            }
        }
        p += elen;
    }
}

static void debias_packet(region h, region pl, int dir, const int32_t *cfg, dir_state *st) {
    if (h.len < 1) return;
    uint8_t *b = h.b;
    int version = b[0] >> 4;
    int64_t l4 = -1;
    int proto = -1, later_fragment = 0;
    int client = dir >= 0; /* the packet goes from the first sender to its peer */
    if (version == 4) {
        if (cfg[C_TOS]) zero(h, 1, 1);
        if (cfg[C_IPID]) zero(h, 4, 2);
        if (cfg[C_TTL]) zero(h, 8, 1);
        if (cfg[C_CHECKSUMS]) zero(h, 10, 2);
        if (cfg[C_ADDR] == ZERO) zero(h, 12, 8);
        else if (cfg[C_ADDR] == RELATIVE) {
            put(h, 12, 4, client ? 0 : 1);
            put(h, 16, 4, client ? 1 : 0);
        }
        if (h.len >= 20) {
            l4 = (int64_t)(b[0] & 15) * 4;
            proto = b[9];
            later_fragment = (rd16(b + 6) & 0x1FFF) != 0;
            if (l4 < 20) l4 = -1;
        }
    } else if (version == 6) {
        if (cfg[C_TOS] && h.len >= 2) { b[0] &= 0xF0; b[1] &= 0x0F; }
        if (cfg[C_FLOWLABEL]) {
            if (h.len >= 2) b[1] &= 0xF0;
            zero(h, 2, 2);
        }
        if (cfg[C_TTL]) zero(h, 7, 1);
        if (cfg[C_ADDR] == ZERO) zero(h, 8, 32);
        else if (cfg[C_ADDR] == RELATIVE) {
            zero(h, 8, 32);
            put(h, 20, 4, client ? 0 : 1);
            put(h, 36, 4, client ? 1 : 0);
        }
        if (h.len >= 40) {
            proto = b[6];
            l4 = 40;
            for (int i = 0; i < MAX_TAGS && l4 >= 0; i++) {
                if (proto == 0 || proto == 43 || proto == 60 || proto == 135 || proto == 139 ||
                    proto == 140 || proto == 51) {
                    if (l4 + 2 > h.len) { l4 = -1; break; }
                    int64_t next = proto == 51 ? l4 + ((int64_t)b[l4 + 1] + 2) * 4
                                               : l4 + ((int64_t)b[l4 + 1] + 1) * 8;
                    proto = b[l4];
                    l4 = next;
                } else if (proto == 44) {
                    if (l4 + 8 > h.len) { l4 = -1; break; }
                    later_fragment = (rd16(b + l4 + 2) & 0xFFF8) != 0;
                    proto = b[l4];
                    l4 += 8;
                    if (later_fragment) break;
                } else {
                    break;
                }
            }
        }
    }
    if (l4 < 0 || later_fragment) return;
    dir_state *s = st + (client ? 0 : 1);
    if (proto == 6 || proto == 17 || proto == 136 || proto == 132) {
        if (cfg[C_PORTS] == ZERO) zero(h, l4, 4);
        else if (cfg[C_PORTS] == RELATIVE) {
            put(h, l4, 2, client ? 0 : 1);
            put(h, l4 + 2, 2, client ? 1 : 0);
        }
    }
    if (proto == 6) {
        int flags_seen = visible(h, l4 + 13, 1);
        int ack_flag = flags_seen && (b[l4 + 13] & 0x10);
        if (cfg[C_SEQ] == ZERO) zero(h, l4 + 4, 8);
        else if (cfg[C_SEQ] == RELATIVE) {
            relative32(h, l4 + 4, &s->have_seq, &s->seq, 0);
            if (ack_flag) relative32(h, l4 + 8, &s->have_ack, &s->ack, 0);
            else zero(h, l4 + 8, 4);
        }
        if (cfg[C_WINDOW]) zero(h, l4 + 14, 2);
        if (cfg[C_CHECKSUMS]) zero(h, l4 + 16, 2);
        if (cfg[C_TSOPT] != KEEP && visible(h, l4 + 12, 1)) {
            int64_t end = l4 + (int64_t)(b[l4 + 12] >> 4) * 4;
            int64_t o = l4 + 20;
            while (o < end && o < h.len) {
                int kind = b[o];
                if (kind == 0) break;
                if (kind == 1) { o++; continue; }
                if (o + 1 >= h.len) break;
                int olen = b[o + 1];
                if (olen < 2) break;
                if (kind == 8 && olen == 10) {
                    transform32(h, o + 2, cfg[C_TSOPT], &s->have_tsval, &s->tsval, 0);
                    transform32(h, o + 6, cfg[C_TSOPT], &s->have_tsecr, &s->tsecr, 1);
                }
                o += olen;
            }
        }
        tls(pl, cfg);
    } else if (proto == 17 || proto == 136) {
        if (cfg[C_CHECKSUMS]) zero(h, l4 + 6, 2);
    } else if (proto == 132) {
        if (cfg[C_CHECKSUMS]) zero(h, l4 + 8, 4);
    } else if (proto == 1 || proto == 58) {
        if (cfg[C_CHECKSUMS]) zero(h, l4 + 2, 2);
    }
}

/* De-bias in place the byte arrays of n flows: bytes is [n, n_packets * (hb + pb)] uint8,
 * header_lens / payload_lens [n, n_packets] (real bytes copied), dirs [n, n_packets]
 * (+1 from the first sender, -1 towards it, 0 no packet), cfg[C_COUNT] the switches. */
void nm_debias(uint8_t *bytes, int64_t n, int32_t n_packets, int32_t hb, int32_t pb,
               const uint16_t *header_lens, const uint16_t *payload_lens, const int8_t *dirs,
               const int32_t *cfg) {
    int64_t width = (int64_t)n_packets * (hb + pb);
    for (int64_t i = 0; i < n; i++) {
        dir_state st[2];
        memset(st, 0, sizeof st);
        for (int32_t j = 0; j < n_packets; j++) {
            int64_t k = i * n_packets + j;
            uint8_t *base = bytes + i * width + (int64_t)j * (hb + pb);
            region h = {base, header_lens[k] < hb ? header_lens[k] : hb};
            region pl = {base + hb, payload_lens[k] < pb ? payload_lens[k] : pb};
            if (dirs[k] == 0) continue;
            debias_packet(h, pl, dirs[k], cfg, st);
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* flow table: the per-packet part of netmamba/flows.py's FlowMeter (the Python meter there is
 * the reference; tests check both give identical flows). Per packet: find the flow of its key
 * (hash table), end it first if idle or too long, else move it to the most recent end of the
 * LRU list; create a flow when needed (and evict the least recent one above max_flows); count
 * packets and bytes. Flows idle for longer than the timeout are ended as the clock (the latest
 * packet time) passes them. Python is told which packets start a flow, each packet's position
 * in its flow, and the flows that ended (events, with their counters), in order. */

#include <stdlib.h>

enum { EV_IDLE = 0, EV_ACTIVE = 1, EV_EVICTED = 2, EV_END = 3 };

typedef struct {
    int32_t key_off, key_len;
    int64_t idle, active, max_flows;
    int64_t clock, next_sweep;
    /* slots */
    int64_t cap, n_slots, open;
    uint8_t *keys;
    int64_t *first, *last, *packets, *bytes;
    int32_t *prev, *next, *bucket_of;
    int32_t head, tail;
    int32_t *free_list;
    int64_t n_free;
    /* hash buckets: slot id, -1 empty, -2 deleted */
    int32_t *buckets;
    int64_t n_buckets, used, deleted;
} nm_meter;

typedef struct {
    int64_t *pos;     /* packet index before which the event happened (n: after the batch) */
    int32_t *slot;
    uint8_t *reason;
    int64_t *first, *last, *packets, *bytes;
    int64_t n, cap;
} ev_out;

static uint64_t key_hash(const uint8_t *k, int32_t len) {
    uint64_t h = 1469598103934665603ULL;
    for (int32_t i = 0; i < len; i++) { h ^= k[i]; h *= 1099511628211ULL; }
    return h ^ (h >> 29);
}

void nm_meter_free(nm_meter *m) {
    if (!m) return;
    free(m->keys); free(m->first); free(m->last); free(m->packets); free(m->bytes);
    free(m->prev); free(m->next); free(m->bucket_of); free(m->free_list); free(m->buckets);
    free(m);
}

static int grow(void **field, int64_t cap, size_t item) {
    void *p = realloc(*field, (size_t)cap * item);
    if (!p) return 0;
    *field = p;
    return 1;
}

static int grow_slots(nm_meter *m) {
    int64_t cap = m->cap ? m->cap * 2 : 1024;
    if (!grow((void **)&m->keys, cap, 40) || !grow((void **)&m->first, cap, 8) ||
        !grow((void **)&m->last, cap, 8) || !grow((void **)&m->packets, cap, 8) ||
        !grow((void **)&m->bytes, cap, 8) || !grow((void **)&m->prev, cap, 4) ||
        !grow((void **)&m->next, cap, 4) || !grow((void **)&m->bucket_of, cap, 4) ||
        !grow((void **)&m->free_list, cap, 4))
        return 0;
    m->cap = cap;
    return 1;
}

static int rehash(nm_meter *m, int64_t n_buckets) {
    int32_t *b = malloc((size_t)n_buckets * sizeof(int32_t));
    if (!b) return 0;
    for (int64_t i = 0; i < n_buckets; i++) b[i] = -1;
    for (int32_t s = m->head; s >= 0; s = m->next[s]) {
        uint64_t i = key_hash(m->keys + (int64_t)s * 40, m->key_len) & (uint64_t)(n_buckets - 1);
        while (b[i] != -1) i = (i + 1) & (uint64_t)(n_buckets - 1);
        b[i] = s;
        m->bucket_of[s] = (int32_t)i;
    }
    free(m->buckets);
    m->buckets = b;
    m->n_buckets = n_buckets;
    m->used = m->open;
    m->deleted = 0;
    return 1;
}

nm_meter *nm_meter_new(int32_t key_off, int64_t idle, int64_t active, int64_t max_flows) {
    nm_meter *m = calloc(1, sizeof(nm_meter));
    if (!m) return NULL;
    m->key_off = key_off;
    m->key_len = 40 - key_off;
    m->idle = idle;
    m->active = active;
    m->max_flows = max_flows;
    m->clock = -(1LL << 62);
    m->next_sweep = m->clock;
    m->head = m->tail = -1;
    if (!grow_slots(m) || !rehash(m, 4096)) { nm_meter_free(m); return NULL; }
    return m;
}

int64_t nm_meter_open(const nm_meter *m) { return m->open; }

static void lru_unlink(nm_meter *m, int32_t s) {
    if (m->prev[s] >= 0) m->next[m->prev[s]] = m->next[s]; else m->head = m->next[s];
    if (m->next[s] >= 0) m->prev[m->next[s]] = m->prev[s]; else m->tail = m->prev[s];
}

static void lru_append(nm_meter *m, int32_t s) {
    m->prev[s] = m->tail;
    m->next[s] = -1;
    if (m->tail >= 0) m->next[m->tail] = s; else m->head = s;
    m->tail = s;
}

static int emit(ev_out *e, int64_t pos, nm_meter *m, int32_t s, int reason) {
    if (e->n >= e->cap) return 0;
    e->pos[e->n] = pos;
    e->slot[e->n] = s;
    e->reason[e->n] = (uint8_t)reason;
    e->first[e->n] = m->first[s];
    e->last[e->n] = m->last[s];
    e->packets[e->n] = m->packets[s];
    e->bytes[e->n] = m->bytes[s];
    e->n++;
    return 1;
}

/* remove slot s from the table and the LRU list, and put it on the free list */
static void release(nm_meter *m, int32_t s) {
    lru_unlink(m, s);
    m->buckets[m->bucket_of[s]] = -2;
    m->deleted++;
    m->used--;
    m->open--;
    m->free_list[m->n_free++] = s;
}

static int sweep(nm_meter *m, ev_out *e, int64_t pos) {
    while (m->head >= 0) {
        int32_t s = m->head;
        if (m->clock - m->last[s] > m->idle) {
            if (!emit(e, pos, m, s, EV_IDLE)) return 0;
            release(m, s);
        } else {
            m->next_sweep = m->last[s] + m->idle + 1;
            return 1;
        }
    }
    m->next_sweep = m->clock + m->idle + 1;
    return 1;
}

/* Feed n usable packets. Per packet: slot_out (its flow), count_out (packets of the flow so
 * far, this one included), new_out (1 when this packet starts a flow). Events go to the ev_*
 * arrays (capacity ev_cap >= open flows + 2 n guarantees room). Returns the number of events,
 * or -1 when out of memory / event room (the meter is then unusable). */
int64_t nm_meter_add(nm_meter *m, const nm_packet *pkts, int64_t n, int32_t *slot_out,
                     int64_t *count_out, uint8_t *new_out, int64_t *ev_pos, int32_t *ev_slot,
                     uint8_t *ev_reason, int64_t *ev_first, int64_t *ev_last,
                     int64_t *ev_packets, int64_t *ev_bytes, int64_t ev_cap) {
    ev_out e = {ev_pos, ev_slot, ev_reason, ev_first, ev_last, ev_packets, ev_bytes, 0, ev_cap};
    int64_t mask;
    for (int64_t i = 0; i < n; i++) {
        const nm_packet *p = pkts + i;
        int64_t t = p->ts_ns;
        if (t > m->clock) {
            m->clock = t;
            if (m->clock >= m->next_sweep && !sweep(m, &e, i)) return -1;
        }
        const uint8_t *key = p->key + m->key_off;
        uint64_t h = key_hash(key, m->key_len);
        mask = m->n_buckets - 1;
        uint64_t b = h & (uint64_t)mask;
        int64_t free_bucket = -1;
        int32_t s = -1;
        for (;;) {
            int32_t v = m->buckets[b];
            if (v == -1) break;
            if (v == -2) {
                if (free_bucket < 0) free_bucket = (int64_t)b;
            } else if (memcmp(m->keys + (int64_t)v * 40, key, (size_t)m->key_len) == 0) {
                s = v;
                break;
            }
            b = (b + 1) & (uint64_t)mask;
        }
        if (s >= 0 && t - m->last[s] <= m->idle && t - m->first[s] <= m->active) {
            lru_unlink(m, s);
            lru_append(m, s);
            new_out[i] = 0;
        } else {
            if (s >= 0) {
                if (!emit(&e, i, m, s, t - m->last[s] > m->idle ? EV_IDLE : EV_ACTIVE)) return -1;
                release(m, s);
                free_bucket = m->bucket_of[s];  /* the bucket just freed */
            }
            if (m->n_free == 0 && m->n_slots == m->cap && !grow_slots(m)) return -1;
            if ((m->used + m->deleted + 1) * 10 > m->n_buckets * 7) {
                int64_t size = m->n_buckets;
                while ((m->open + 1) * 10 > size * 4) size *= 2;
                if (!rehash(m, size)) return -1;
                mask = m->n_buckets - 1;
                b = h & (uint64_t)mask;
                while (m->buckets[b] != -1) b = (b + 1) & (uint64_t)mask;
                free_bucket = (int64_t)b;
            } else if (free_bucket < 0) {
                free_bucket = (int64_t)b;  /* the empty bucket that ended the probe */
            } else {
                m->deleted--;  /* a deleted bucket is reused */
            }
            s = m->n_free ? m->free_list[--m->n_free] : (int32_t)m->n_slots++;
            memcpy(m->keys + (int64_t)s * 40, key, (size_t)m->key_len);
            m->buckets[free_bucket] = s;
            m->bucket_of[s] = (int32_t)free_bucket;
            m->used++;
            m->open++;
            m->first[s] = m->last[s] = t;
            m->packets[s] = m->bytes[s] = 0;
            lru_append(m, s);
            new_out[i] = 1;
            if (m->open > m->max_flows) {
                int32_t old = m->head;
                if (!emit(&e, i, m, old, EV_EVICTED)) return -1;
                release(m, old);
            }
        }
        m->packets[s] += 1;
        m->bytes[s] += p->ip_len;
        if (t > m->last[s]) m->last[s] = t;
        slot_out[i] = s;
        count_out[i] = m->packets[s];
    }
    return e.n;
}

/* Move the clock without packets (events at position 0), or with end = 1 end every flow
 * (least recent first). Same event arrays as nm_meter_add. */
int64_t nm_meter_advance(nm_meter *m, int64_t now, int32_t end, int64_t *ev_pos,
                         int32_t *ev_slot, uint8_t *ev_reason, int64_t *ev_first,
                         int64_t *ev_last, int64_t *ev_packets, int64_t *ev_bytes,
                         int64_t ev_cap) {
    ev_out e = {ev_pos, ev_slot, ev_reason, ev_first, ev_last, ev_packets, ev_bytes, 0, ev_cap};
    if (end) {
        while (m->head >= 0) {
            int32_t s = m->head;
            if (!emit(&e, 0, m, s, EV_END)) return -1;
            release(m, s);
        }
        return e.n;
    }
    if (now > m->clock) {
        m->clock = now;
        if (m->clock >= m->next_sweep && !sweep(m, &e, 0)) return -1;
    }
    return e.n;
}

/* Counters of an open flow: first, last, packets, bytes. */
void nm_meter_counters(const nm_meter *m, int32_t s, int64_t *out) {
    out[0] = m->first[s];
    out[1] = m->last[s];
    out[2] = m->packets[s];
    out[3] = m->bytes[s];
}
