// SPDX-License-Identifier: GPL-2.0
// faults.bpf.c: per-link loss, duplication and corruption for testbed links.
//
// Two tc programs (tcx or clsact), one per direction, attached to the
// switch-side veth peer of one host (see faults_shared.h for the direction
// names). Each frame draws, in this order:
//   a TCP RST, while the drop_resets budget lasts -> TC_ACT_SHOT (a reset
//                lost: nothing retransmits one);
//   a pure TCP ACK, before drop_acks_until_ns -> TC_ACT_SHOT (the receiver's
//                acknowledgements lost: its peer waits out its timers);
//   loss      -> TC_ACT_SHOT;
//   duplicate -> bpf_clone_redirect() to the same hook (the copy carries
//                FLT_DUP_MARK and is passed untouched when it comes back);
//   corrupt   -> IPv4 TCP/UDP frames with payload only: XOR one random
//                payload byte with a non-zero value and leave every checksum
//                stale, so the receiving stack counts TcpInCsumErrors /
//                UdpInCsumErrors and drops it. A one-byte change always
//                changes the 16-bit ones' complement sum, so none slips by.
// Frames that pass return TC_ACT_UNSPEC (tcx: "next"), so other programs on
// the same hook still run.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "testing/faults/faults_shared.h"

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, FLT_DIRS);
  __type(key, __u32);
  __type(value, struct flt_config);
} config SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, FLT_DIRS * FLT_CTR_MAX);
  __type(key, __u32);
  __type(value, __u64);
} counters SEC(".maps");

// xorshift64 state per CPU and direction; 0 means "seed me".
struct {
  __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
  __uint(max_entries, FLT_DIRS);
  __type(key, __u32);
  __type(value, __u64);
} rng SEC(".maps");

static __always_inline void count(__u32 dir, __u32 ctr) {
  __u32 key = dir * FLT_CTR_MAX + ctr;
  __u64 *v = bpf_map_lookup_elem(&counters, &key);
  if (v) *v += 1;
}

// A uniform 32-bit draw: seeded xorshift64* when the config has a seed (the
// sequence is reproducible per CPU), the kernel's prandom otherwise.
static __always_inline __u32 draw32(const struct flt_config *cfg, __u32 dir) {
  if (cfg->seed == 0) return bpf_get_prandom_u32();
  __u64 *s = bpf_map_lookup_elem(&rng, &dir);
  if (!s) return bpf_get_prandom_u32();
  __u64 x = *s;
  if (x == 0) x = cfg->seed ^ ((__u64)(bpf_get_smp_processor_id() + 1) * 0x9E3779B97F4A7C15ull);
  if (x == 0) x = 1;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  return (__u32)((x * 0x2545F4914F6CDD1Dull) >> 32);
}

static __always_inline int hit(const struct flt_config *cfg, __u32 dir, __u32 ppm) {
  if (ppm == 0) return 0;
  if (ppm >= FLT_PPM) return 1;
  return (__u32)(((__u64)draw32(cfg, dir) * FLT_PPM) >> 32) < ppm;
}

// The IPv4 header of an unfragmented IPv4 frame into *ip, and the offset of
// its L4 header; 0 when the frame is not that.
static __always_inline __u32 ipv4_l4(struct __sk_buff *skb, struct iphdr *ip) {
  struct ethhdr eth;
  if (bpf_skb_load_bytes(skb, 0, &eth, sizeof(eth)) < 0) return 0;
  if (eth.h_proto != bpf_htons(ETH_P_IP)) return 0;
  if (bpf_skb_load_bytes(skb, sizeof(eth), ip, sizeof(*ip)) < 0) return 0;
  if (ip->version != 4 || ip->ihl < 5) return 0;
  if (ip->frag_off & bpf_htons(0x3fff)) return 0;  // MF or an offset: a fragment
  return sizeof(eth) + ip->ihl * 4;
}

// Offset and length of the L4 payload of an unfragmented IPv4 TCP/UDP frame,
// or 0 when the frame has none.
static __always_inline __u32 payload_span(struct __sk_buff *skb, __u32 *off) {
  struct iphdr ip;
  __u32 l4 = ipv4_l4(skb, &ip);
  if (!l4) return 0;
  __u32 l3 = ip.ihl * 4;
  __u32 hdr;
  if (ip.protocol == IPPROTO_TCP) {
    struct tcphdr tcp;
    if (bpf_skb_load_bytes(skb, l4, &tcp, sizeof(tcp)) < 0) return 0;
    hdr = tcp.doff * 4;
  } else if (ip.protocol == IPPROTO_UDP) {
    hdr = sizeof(struct udphdr);
  } else {
    return 0;
  }
  __u32 tot = bpf_ntohs(ip.tot_len);
  if (tot <= l3 + hdr) return 0;
  __u32 len = tot - l3 - hdr;
  if (sizeof(struct ethhdr) + tot > skb->len) return 0;  // truncated: leave it alone
  *off = l4 + hdr;
  return len;
}

// The IPv4 and TCP headers of an unfragmented IPv4 TCP frame into *ip and
// *tcp; 0 when the frame is not that.
static __always_inline int tcp_headers(struct __sk_buff *skb, struct iphdr *ip,
                                       struct tcphdr *tcp) {
  __u32 l4 = ipv4_l4(skb, ip);
  if (!l4 || ip->protocol != IPPROTO_TCP) return 0;
  return bpf_skb_load_bytes(skb, l4, tcp, sizeof(*tcp)) == 0;
}

// An unfragmented IPv4 TCP frame with RST set.
static __always_inline int is_tcp_rst(struct __sk_buff *skb) {
  struct iphdr ip;
  struct tcphdr tcp;
  return tcp_headers(skb, &ip, &tcp) && tcp.rst;
}

// An unfragmented IPv4 TCP frame that only acknowledges: ACK set, no
// payload, no SYN, FIN or RST.
static __always_inline int is_pure_ack(struct __sk_buff *skb) {
  struct iphdr ip;
  struct tcphdr tcp;
  if (!tcp_headers(skb, &ip, &tcp)) return 0;
  if (!tcp.ack || tcp.syn || tcp.fin || tcp.rst) return 0;
  return bpf_ntohs(ip.tot_len) == ip.ihl * 4 + tcp.doff * 4;
}

static __always_inline int handle(struct __sk_buff *skb, __u32 dir, __u64 redirect_flags) {
  if (skb->mark == FLT_DUP_MARK) {  // our own copy coming back: pass it
    skb->mark = 0;
    return TC_ACT_UNSPEC;
  }
  __u32 key = dir;
  struct flt_config *cfg = bpf_map_lookup_elem(&config, &key);
  if (!cfg) return TC_ACT_UNSPEC;
  count(dir, FLT_CTR_SEEN);

  if ((__s32)*(volatile __u32 *)&cfg->drop_resets > 0 && is_tcp_rst(skb) &&
      (__s32)__sync_fetch_and_sub(&cfg->drop_resets, 1) > 0) {
    count(dir, FLT_CTR_RST_DROPPED);
    return TC_ACT_SHOT;
  }
  if (cfg->drop_acks_until_ns && bpf_ktime_get_ns() < cfg->drop_acks_until_ns &&
      is_pure_ack(skb)) {
    count(dir, FLT_CTR_ACK_DROPPED);
    return TC_ACT_SHOT;
  }
  if (hit(cfg, dir, cfg->loss_ppm)) {
    count(dir, FLT_CTR_DROPPED);
    return TC_ACT_SHOT;
  }
  if (hit(cfg, dir, cfg->dup_ppm)) {
    __u32 mark = skb->mark;
    skb->mark = FLT_DUP_MARK;
    long rc = bpf_clone_redirect(skb, skb->ifindex, redirect_flags);
    skb->mark = mark;
    count(dir, rc == 0 ? FLT_CTR_DUPLICATED : FLT_CTR_DUP_FAILED);
  }
  if (cfg->corrupt_ppm) {
    __u32 off = 0;
    __u32 len = payload_span(skb, &off);
    if (len > 0) {
      count(dir, FLT_CTR_CORRUPT_ELIGIBLE);
      if (hit(cfg, dir, cfg->corrupt_ppm)) {
        __u32 r = draw32(cfg, dir);
        __u32 at = off + (__u32)(((__u64)r * len) >> 32);
        __u8 b;
        if (bpf_skb_load_bytes(skb, at, &b, 1) == 0) {
          b ^= (__u8)((r & 0xff) | 1);
          if (bpf_skb_store_bytes(skb, at, &b, 1, 0) == 0) count(dir, FLT_CTR_CORRUPTED);
        }
      }
    }
  }
  return TC_ACT_UNSPEC;
}

SEC("tc")
int fault_from_host(struct __sk_buff *skb) { return handle(skb, FLT_DIR_FROM_HOST, BPF_F_INGRESS); }

SEC("tc")
int fault_to_host(struct __sk_buff *skb) { return handle(skb, FLT_DIR_TO_HOST, 0); }

char LICENSE[] SEC("license") = "GPL";
