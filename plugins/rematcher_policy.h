/* rematcher policy plugin ABI.
 *
 * This header owns the contract between the rematcher core (the host) and a
 * load-balancing policy shipped as a shared object (the plugin). It is pure C
 * and uses the standard library only, so a plugin can be written in C, C++ or
 * anything that speaks the C ABI. It is the ONLY header a plugin needs; the C++
 * adapter in plugins/policy_cc.h is optional sugar on top of it.
 *
 * How the host finds a plugin
 * ---------------------------
 * The host dlopen()s the .so (RTLD_NOW | RTLD_LOCAL) and dlsym()s ONE function,
 * RM_POLICY_ENTRY_SYMBOL ("rematcher_policy_entry"). dlsym is only guaranteed
 * for functions, so the entry point is a function (PostgreSQL's
 * PG_MODULE_MAGIC does the same), returning a pointer to a static descriptor
 * (struct rm_policy_v1) that lives as long as the .so stays loaded.
 *
 * Versioning rules (append-only evolution)
 * ----------------------------------------
 *  - The first four fields of the descriptor (struct_size, abi_major,
 *    abi_minor, name) are the same in EVERY major version, forever. The host
 *    reads them first and only then interprets the rest.
 *  - abi_major: bumped for any incompatible change (a field removed, retyped,
 *    reordered, a semantic change). The host REFUSES to load a plugin whose
 *    abi_major differs from its own, with an error naming both versions.
 *  - abi_minor: bumped when fields are APPENDED to a struct (descriptor,
 *    snapshot, request, result). Nothing is ever inserted or removed.
 *  - Every struct that crosses the boundary starts with its own struct_size,
 *    filled by whoever allocated it:
 *      * the host reads a descriptor field only if struct_size covers it, and
 *        refuses a descriptor smaller than RM_POLICY_V1_MIN_SIZE (ABI 1.0);
 *      * the plugin reads a snapshot/request/result field added after 1.0
 *        only if RM_HAS_FIELD(ptr, type, field) says it is present.
 *    So an old host runs a newer-minor plugin (extra fields are ignored) and a
 *    newer host runs an old plugin (it sees the smaller struct_size).
 *  - struct rm_backend_info is an ARRAY element, so its layout is frozen for
 *    the whole major version (48 bytes). Per-backend data added in a later
 *    minor arrives as a new parallel array appended to struct rm_snapshot.
 *  - All layouts assume an LP64 target (x86-64, arm64): pointers are 8 bytes.
 *    Sizes are checked with static asserts at the bottom of this file.
 *
 * Threading
 * ---------
 *  - create() and destroy() may be called from any thread, never concurrently
 *    with another call on the same instance.
 *  - pick() and on_result() are called from ONE thread at a time per
 *    instance, so an instance needs no locking for its own state. Different
 *    instances (even of the same .so) may be called concurrently from
 *    different threads, so mutable globals / statics in a plugin need their
 *    own synchronisation.
 *  - pick() is on the request path: it must not block, sleep or do I/O, and
 *    should be O(num_backends) at worst.
 *  - pick() decides a client's NEXT request. It is called when a request
 *    starts and when its response starts, and again for a decision not yet
 *    used when the backend it names falls behind (a stall, see the host's
 *    --redecide_us): the same client may be asked about the same request
 *    more than once, with fresher load each time. Such a repeat carries
 *    RM_REQUEST_REPEAT and the earlier choice (ABI 1.2): a policy that keeps
 *    a rotation or credits (round robin) must not count it as another
 *    turn, or a client asked twice per request skips every other backend.
 *
 * Errors
 * ------
 *  - Nothing may unwind (C++ exceptions, longjmp) across these functions.
 *  - create() reports failure by returning NULL and writing a NUL-terminated
 *    human-readable message of at most err_len bytes (including the NUL)
 *    into err. The host shows it to the operator verbatim.
 *  - pick() returns an index into snap->backends, or a negative value for
 *    "no preference: keep the client on its current backend". The host
 *    bounds-checks the result: an index >= num_backends, or one naming a
 *    backend that is not eligible (see rm_backend_eligible), is counted as a
 *    plugin error and treated as "no preference". A plugin cannot make the
 *    host send traffic to an unhealthy or draining backend.
 */
#ifndef REMATCHER_PLUGINS_REMATCHER_POLICY_H_
#define REMATCHER_PLUGINS_REMATCHER_POLICY_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RM_POLICY_ABI_MAJOR 1
#define RM_POLICY_ABI_MINOR 3 /* 1.1: RM_BACKEND_STALLED; 1.2: rm_request.flags, previous_pick;
                                 1.3: rm_snapshot.pending */

/* The one symbol the host looks up. */
#define RM_POLICY_ENTRY_SYMBOL "rematcher_policy_entry"

/* Marks the entry point exported even when the plugin is compiled with
 * -fvisibility=hidden (which the rematcher_policy() Bazel macro does). */
#if defined(__GNUC__) || defined(__clang__)
#define RM_POLICY_EXPORT __attribute__((visibility("default")))
#else
#define RM_POLICY_EXPORT
#endif

/* True when `ptr` (a struct starting with uint32_t struct_size) is large
 * enough to contain `field`. Use it before reading any field added after 1.0. */
#define RM_HAS_FIELD(ptr, type, field)          \
  ((ptr)->struct_size >= offsetof(type, field) + sizeof(((type *)0)->field))

/* pick() return value meaning "no preference, keep the current backend". Any
 * negative value means the same. */
#define RM_NO_PREFERENCE (-1)

/* rm_backend_info.flags */
#define RM_BACKEND_HEALTHY (1u << 0)  /* health checks pass */
#define RM_BACKEND_DRAINING (1u << 1) /* being removed: send nothing new */
/* Since 1.1. Requests are unanswered and none has made progress (no
 * response began) for several times the backend's usual latency
 * (CoreOptions::stall_min, --stall_ms): a stall such as a garbage-collector
 * pause. Still eligible; load-aware policies should prefer any backend
 * without it (rm_backend_preferred). A 1.0 plugin never looks at it. The
 * flag lasts at most --stall_hold_ms per stall. */
#define RM_BACKEND_STALLED (1u << 2)

/* One backend as the core sees it at snapshot time. Frozen for major 1.
 *
 * Layout (LP64, 48 bytes, no implicit padding):
 *   off  size  field
 *     0     4  id
 *     4     4  ipv4
 *     8     2  port
 *    10     2  flags
 *    12     4  weight
 *    16     4  outstanding
 *    20     4  idle_conns
 *    24     8  requests_total
 *    32     8  latency_ewma_first_byte_ns
 *    40     8  latency_ewma_last_byte_ns
 */
struct rm_backend_info {
  uint32_t id;          /* stable backend id used by the core and its maps;
                           indices move when backends come and go, ids don't */
  uint32_t ipv4;        /* network byte order */
  uint16_t port;        /* network byte order */
  uint16_t flags;       /* RM_BACKEND_* */
  uint32_t weight;      /* configured weight; 0 = take no new requests */
  uint32_t outstanding; /* requests in flight on this backend right now
                           (by default, started and not answered yet: a
                           request leaves at its response's first byte;
                           --load_until_acked: when the client has
                           acknowledged the whole response),
                           plus (by default, --count_pending_decisions)
                           the client requests already decided for it and
                           not started yet: every client's next request is
                           decided when its previous one starts, so this
                           is the load to come. Without it, many decisions
                           taken from one instant's counts all name the
                           same least loaded backend. How many of them are
                           decisions: rm_snapshot.pending (1.3). */
  uint32_t idle_conns;  /* idle pooled connections ready for a splice */
  uint64_t requests_total;             /* requests sent since the LB started */
  uint64_t latency_ewma_first_byte_ns; /* request end -> first response byte */
  uint64_t latency_ewma_last_byte_ns;  /* request end -> last response byte;
                                          0 = no sample yet */
};

/* What the core passes to every pick(). Allocated and filled by the host.
 *
 * Layout (LP64, 32 bytes; 24 from a 1.0-1.2 host):
 *   off  size  field
 *     0     4  struct_size
 *     4     4  num_backends
 *     8     8  now_ns
 *    16     8  backends
 *    24     8  pending         (1.3; read through rm_snapshot_pending)
 */
struct rm_snapshot {
  uint32_t struct_size;  /* sizeof(struct rm_snapshot) as the host built it */
  uint32_t num_backends; /* entries in backends[] */
  uint64_t now_ns;       /* CLOCK_MONOTONIC at snapshot time */
  /* OWNERSHIP: the host owns this array (and the snapshot itself). It is
   * valid only for the duration of the call it is passed to; the plugin must
   * not keep the pointer, write through it or free it. Copy what you need. */
  const struct rm_backend_info *backends;
  /* Since 1.3, a parallel array (num_backends entries, or NULL): of
   * backends[i].outstanding, how many are decisions for clients' next
   * requests that have not started yet (the host's
   * --count_pending_decisions; 0 each when it is off). Every idle client
   * holds one, so in an open loop they are most of `outstanding`: tens per
   * backend against a request or two in flight. A count-based policy wants
   * them (without them, decisions taken from one instant's counts all name
   * the same backend); a policy that multiplies the load by a latency may
   * want only the requests in flight, rm_backend_in_flight. Same ownership
   * as backends. */
  const uint32_t *pending;
};

/* Decisions made for backends[i] and not started yet (see
 * rm_snapshot.pending); 0 from a host older than 1.3. */
static inline uint32_t rm_snapshot_pending(const struct rm_snapshot *snap, uint32_t i) {
  if (!RM_HAS_FIELD(snap, struct rm_snapshot, pending) || snap->pending == NULL ||
      i >= snap->num_backends)
    return 0;
  return snap->pending[i];
}

/* Requests in flight on backends[i]: its outstanding without the decisions
 * still to come. From a host older than 1.3, all of outstanding. */
static inline uint32_t rm_backend_in_flight(const struct rm_snapshot *snap, uint32_t i) {
  if (i >= snap->num_backends) return 0;
  const uint32_t out = snap->backends[i].outstanding, pend = rm_snapshot_pending(snap, i);
  return out > pend ? out - pend : 0;
}

/* The request that just finished and whose client needs a backend for its
 * NEXT request. Allocated and filled by the host.
 *
 * Layout (LP64, 40 bytes):
 *   off  size  field
 *     0     4  struct_size
 *     4     4  client_id
 *     8     4  current_backend
 *    12     4  client_ipv4
 *    16     2  client_port
 *    18     2  flags           (1.2; zero from a 1.0/1.1 host)
 *    20     4  previous_pick   (1.2; read only with RM_REQUEST_REPEAT)
 *    24     8  requests_on_connection
 *    32     8  connection_start_ns
 */
struct rm_request {
  uint32_t struct_size;  /* sizeof(struct rm_request) as the host built it */
  uint32_t client_id;    /* stable id of the client connection in the core */
  int32_t current_backend; /* index into snap->backends of the backend now
                              serving this client, or -1 if none / not in
                              the snapshot any more */
  uint32_t client_ipv4;  /* network byte order */
  uint16_t client_port;  /* network byte order */
  uint16_t flags;        /* RM_REQUEST_* (ABI 1.2; the padding 1.0 and 1.1
                            hosts zero, so "no flags" there) */
  int32_t previous_pick; /* with RM_REQUEST_REPEAT: index into
                            snap->backends of the backend chosen for this
                            same next request before, or -1 if it is not in
                            the snapshot any more; -1 otherwise (ABI 1.2) */
  uint64_t requests_on_connection; /* requests completed on this client
                                      connection, including this one */
  uint64_t connection_start_ns;    /* CLOCK_MONOTONIC when it was accepted */
};

/* rm_request.flags */
/* This client's next request was already decided by an earlier pick()
 * (at its request's start, or before a re-decision); this call replaces
 * that choice, which previous_pick names. */
#define RM_REQUEST_REPEAT 0x1u

/* The earlier choice a repeat replaces, if it is still in the snapshot:
 * an index into snap->backends, or -1 (not a repeat, or gone). Safe with
 * any host: a 1.0/1.1 host leaves flags zero. */
static inline int32_t rm_request_previous(const struct rm_request *req,
                                          const struct rm_snapshot *snap) {
  if ((req->flags & RM_REQUEST_REPEAT) == 0 || req->previous_pick < 0 ||
      (uint32_t)req->previous_pick >= snap->num_backends)
    return -1;
  return req->previous_pick;
}

/* rm_result.status */
#define RM_RESULT_OK 0u     /* full response received */
#define RM_RESULT_FAILED 1u /* backend reset / closed mid-response */

/* Optional feedback after a response completed. Allocated by the host.
 *
 * Layout (LP64, 32 bytes):
 *   off  size  field
 *     0     4  struct_size
 *     4     4  backend_id
 *     8     4  status
 *    12     4  reserved0 (zero)
 *    16     8  first_byte_ns
 *    24     8  last_byte_ns
 */
struct rm_result {
  uint32_t struct_size;
  uint32_t backend_id;    /* rm_backend_info.id (not an index) */
  uint32_t status;        /* RM_RESULT_* */
  uint32_t reserved0;     /* explicit padding, zero */
  uint64_t first_byte_ns; /* request end -> first response byte */
  uint64_t last_byte_ns;  /* request end -> last response byte */
};

/* The descriptor returned by the entry point. The plugin owns it (static
 * storage); the host never writes or frees it.
 *
 * Layout (LP64, 48 bytes for ABI 1.0):
 *   off  size  field
 *     0     4  struct_size     \
 *     4     2  abi_major        | identical in every major version
 *     6     2  abi_minor        |
 *     8     8  name            /
 *    16     8  create
 *    24     8  destroy
 *    32     8  pick
 *    40     8  on_result
 */
struct rm_policy_v1 {
  uint32_t struct_size; /* sizeof(struct rm_policy_v1) as the PLUGIN saw it */
  uint16_t abi_major;   /* RM_POLICY_ABI_MAJOR the plugin was built against */
  uint16_t abi_minor;   /* RM_POLICY_ABI_MINOR the plugin was built against */
  /* OWNERSHIP: static string owned by the plugin; non-NULL, non-empty. */
  const char *name;

  /* Required. Creates one policy instance from the operator's
   * --policy_args string (never NULL; "" when none were given). Returns NULL
   * on failure after writing a message into err (see "Errors" above).
   * OWNERSHIP: args and err belong to the host and are valid only during the
   * call. The returned instance belongs to the plugin; the host hands it
   * back to destroy() exactly once. */
  void *(*create)(const char *args, char *err, size_t err_len);

  /* Required. Frees an instance returned by create(). */
  void (*destroy)(void *instance);

  /* Required. Chooses the backend for the client's NEXT request: an index
   * into snap->backends, or a negative value for "no preference".
   * OWNERSHIP: snap, snap->backends and req belong to the host and are valid
   * only during this call. */
  int32_t (*pick)(void *instance, const struct rm_snapshot *snap,
                  const struct rm_request *req);

  /* Optional (may be NULL). Feedback once a response has completed.
   * OWNERSHIP: result belongs to the host, valid only during this call. */
  void (*on_result)(void *instance, const struct rm_result *result);
};

/* Bytes of the descriptor every major version starts with. */
#define RM_POLICY_PREFIX_SIZE (offsetof(struct rm_policy_v1, name) + sizeof(const char *))
/* Smallest descriptor a 1.x host accepts: everything ABI 1.0 defined. */
#define RM_POLICY_V1_MIN_SIZE \
  (offsetof(struct rm_policy_v1, on_result) + sizeof(void (*)(void))) /* 48 */

/* The entry point every plugin exports. */
RM_POLICY_EXPORT const struct rm_policy_v1 *rematcher_policy_entry(void);
typedef const struct rm_policy_v1 *(*rm_policy_entry_fn)(void);

/* The eligibility rule every built-in policy uses and the host enforces on
 * whatever a plugin returns: healthy, not draining, weight > 0. */
static inline int rm_backend_eligible(const struct rm_backend_info *b) {
  return (b->flags & RM_BACKEND_HEALTHY) != 0 &&
         (b->flags & RM_BACKEND_DRAINING) == 0 && b->weight > 0;
}

/* Eligible and not stalled: where a load-aware policy sends the next
 * request when it has any such backend. */
static inline int rm_backend_preferred(const struct rm_backend_info *b) {
  return rm_backend_eligible(b) && (b->flags & RM_BACKEND_STALLED) == 0;
}

/* Layout checks (C11 _Static_assert / C++11 static_assert). */
#ifdef __cplusplus
#define RM_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define RM_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif
RM_STATIC_ASSERT(sizeof(void *) == 8, "rematcher plugin ABI assumes LP64");
RM_STATIC_ASSERT(sizeof(struct rm_backend_info) == 48, "rm_backend_info layout");
RM_STATIC_ASSERT(offsetof(struct rm_backend_info, requests_total) == 24,
                 "rm_backend_info layout");
RM_STATIC_ASSERT(sizeof(struct rm_snapshot) == 32 && offsetof(struct rm_snapshot, pending) == 24,
                 "rm_snapshot layout");
RM_STATIC_ASSERT(sizeof(struct rm_request) == 40, "rm_request layout");
RM_STATIC_ASSERT(offsetof(struct rm_request, requests_on_connection) == 24,
                 "rm_request layout");
RM_STATIC_ASSERT(offsetof(struct rm_request, flags) == 18 &&
                     offsetof(struct rm_request, previous_pick) == 20,
                 "rm_request layout: 1.2 uses what was padding");
RM_STATIC_ASSERT(sizeof(struct rm_result) == 32, "rm_result layout");
RM_STATIC_ASSERT(sizeof(struct rm_policy_v1) == 48, "rm_policy_v1 layout");
RM_STATIC_ASSERT(RM_POLICY_PREFIX_SIZE == 16, "descriptor prefix layout");
RM_STATIC_ASSERT(RM_POLICY_V1_MIN_SIZE == 48, "descriptor 1.0 size");

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* REMATCHER_PLUGINS_REMATCHER_POLICY_H_ */
