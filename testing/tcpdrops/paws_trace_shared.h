/* Shared between paws_trace.bpf.c and its userspace (paws_trace.h). */
#ifndef REMATCHER_TESTING_TCPDROPS_PAWS_TRACE_SHARED_H_
#define REMATCHER_TESTING_TCPDROPS_PAWS_TRACE_SHARED_H_

#include <linux/types.h>

#define PT_AGE_BUCKETS 32

/* PAWS drops of one receiving socket address (network order), by what the
 * dropped segment carried relative to what the receiver already had. */
struct pt_counts {
  __u64 stale;     /* data or FIN, all of it below rcv_nxt: an old copy */
  __u64 fresh;     /* data or FIN beyond rcv_nxt: new bytes thrown away */
  __u64 pure_ack;  /* no data: an ACK the kernel did not excuse as disordered */
  __u64 request;   /* by a request or listening socket (the receiver had not
                      completed the handshake): counted in PAWSEstab, not
                      classified */
  __u64 timewait;  /* by a TIME_WAIT socket: PAWSTimewait since Linux 6.15 */
  /* How old each classified drop was: ts_recent - TSval in the receiver's
   * TS ticks (ms on Linux), bucket = that, capped at PT_AGE_BUCKETS - 1. */
  __u64 age[PT_AGE_BUCKETS];
};

/* One logged drop (host order, except addresses): every fresh one, and any
 * other at least log_min_age ticks old (the tracer's .bss, 0 = none). */
struct pt_drop {
  __u32 saddr, daddr; /* network order: sender, receiver */
  __u16 sport, dport; /* host order */
  __u32 seq, end_seq, rcv_nxt;
  __u32 tsval, ts_recent;
  __u32 kind;         /* PT_STALE, PT_FRESH, PT_PURE_ACK */
};

enum { PT_STALE = 0, PT_FRESH = 1, PT_PURE_ACK = 2 };

/* drop_log: the first PT_LOG_FRESH_SLOTS slots for fresh drops, the rest
 * for the others at least log_min_age old, so that a run with many fresh
 * drops cannot crowd out the rare old copy a test fails on. */
#define PT_LOG_SLOTS 64
#define PT_LOG_FRESH_SLOTS 48

#endif
