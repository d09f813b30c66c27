/* Compiles the ABI header as strict C11 and checks the rules a C plugin
 * relies on: RM_HAS_FIELD and the eligibility helper. */
#include "plugins/rematcher_policy.h"

#include <stdio.h>

static int failures = 0;
#define EXPECT(cond)                                               \
  do {                                                             \
    if (!(cond)) {                                                 \
      fprintf(stderr, "%s:%d: EXPECT(%s) failed\n", __FILE__,      \
              __LINE__, #cond);                                    \
      failures++;                                                  \
    }                                                              \
  } while (0)

int main(void) {
  struct rm_request req = {0};
  req.struct_size = (uint32_t)offsetof(struct rm_request, requests_on_connection);
  EXPECT(RM_HAS_FIELD(&req, struct rm_request, client_port));
  EXPECT(!RM_HAS_FIELD(&req, struct rm_request, requests_on_connection));
  req.struct_size = sizeof(req);
  EXPECT(RM_HAS_FIELD(&req, struct rm_request, connection_start_ns));

  struct rm_backend_info b = {0};
  EXPECT(!rm_backend_eligible(&b));
  b.flags = RM_BACKEND_HEALTHY;
  EXPECT(!rm_backend_eligible(&b)); /* weight 0 */
  b.weight = 1;
  EXPECT(rm_backend_eligible(&b));
  b.flags |= RM_BACKEND_DRAINING;
  EXPECT(!rm_backend_eligible(&b));

  /* 1.3: the pending array and the in-flight helper, from a 1.3 host and
   * from a 1.2 one (a 24-byte snapshot, whose "pending" is not there). */
  struct rm_backend_info bs[2] = {{0}, {0}};
  bs[0].outstanding = 30;
  bs[1].outstanding = 2;
  const uint32_t pending[2] = {29, 5};
  struct rm_snapshot snap = {0};
  snap.struct_size = sizeof(snap);
  snap.num_backends = 2;
  snap.backends = bs;
  snap.pending = pending;
  EXPECT(rm_snapshot_pending(&snap, 0) == 29);
  EXPECT(rm_backend_in_flight(&snap, 0) == 1);
  EXPECT(rm_backend_in_flight(&snap, 1) == 0); /* never below zero */
  EXPECT(rm_snapshot_pending(&snap, 2) == 0);  /* out of range */
  EXPECT(rm_backend_in_flight(&snap, 2) == 0);
  snap.pending = NULL;
  EXPECT(rm_snapshot_pending(&snap, 0) == 0);
  EXPECT(rm_backend_in_flight(&snap, 0) == 30);
  snap.pending = pending;
  snap.struct_size = (uint32_t)offsetof(struct rm_snapshot, pending);
  EXPECT(rm_snapshot_pending(&snap, 0) == 0);
  EXPECT(rm_backend_in_flight(&snap, 0) == 30);
  if (failures == 0) printf("PASS\n");
  return failures == 0 ? 0 : 1;
}
