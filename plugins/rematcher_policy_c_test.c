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
  if (failures == 0) printf("PASS\n");
  return failures == 0 ? 0 : 1;
}
