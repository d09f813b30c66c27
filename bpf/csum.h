/* SPDX-License-Identifier: GPL-2.0 */
/*
 * csum.h: Internet checksum arithmetic for the datapath.
 *
 * Contract: header rewrites are checksummed incrementally (RFC 1624): the
 * caller sums the TCP header (and the pseudo-header addresses) before and
 * after rewriting, and rm_csum_replace() folds the difference into the old
 * checksum. A packet that arrived with a bad checksum therefore leaves with
 * a bad checksum: the LB never launders corruption. Packets the LB writes
 * from scratch (SYN-ACK, RST, FIN-ACK, in-place ACKs) carry no payload and
 * get a full checksum.
 * Sums are over raw (network order) memory; the ones' complement sum is byte
 * order independent (RFC 1071), so no swaps are needed.
 */
#ifndef REMATCHER_BPF_CSUM_H_
#define REMATCHER_BPF_CSUM_H_

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

static __always_inline __u16 rm_fold(__u64 s) {
  s = (s & 0xffffffffULL) + (s >> 32);
  s = (s & 0xffffffffULL) + (s >> 32);
  s = (s & 0xffff) + (s >> 16);
  s = (s & 0xffff) + (s >> 16);
  s = (s & 0xffff) + (s >> 16);
  return (__u16)s;
}

/* Sum of `words` 32-bit words at `p` (at most 15: a maximal IPv4 or TCP
 * header). Returns 0 and sets *ok=0 if the span runs past data_end. */
static __always_inline __u64 rm_sum_words(const void *p, __u32 words,
                                          const void *data_end, int *ok) {
  __u64 s = 0;
  const __u32 *w = p;
#pragma clang loop unroll(disable)
  for (__u32 i = 0; i < 15; i++) {
    if (i >= words) break;
    /* Keep clang from folding the bound into pointer math on data_end,
     * which the verifier refuses. */
    asm volatile("" : "+r"(w));
    if ((const void *)(w + 1) > data_end) {
      *ok = 0;
      return 0;
    }
    s += *w;
    w++;
  }
  return s;
}

/* New checksum after a rewrite whose old covered words summed to old_sum
 * (including the old checksum field) and whose new covered words sum to
 * new_sum (with the checksum field zero). */
static __always_inline __u16 rm_csum_replace(__u64 old_sum, __u64 new_sum) {
  __u16 o = rm_fold(old_sum);
  return (__u16)~rm_fold((__u64)(__u16)~o + new_sum);
}

#endif /* REMATCHER_BPF_CSUM_H_ */
