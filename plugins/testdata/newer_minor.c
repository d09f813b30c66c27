/* Compatible on purpose: a plugin from a future 1.x that appended a field to
 * its descriptor. The host must load it and ignore the extra bytes. It also
 * records the last feedback it got through on_result. */
#include "plugins/testdata/fixture_common.h"

struct rm_policy_v1_future {
  struct rm_policy_v1 v1_0;
  void (*added_in_a_later_minor)(void);
};

static uint32_t last_backend_id;

static void record_result(void *instance, const struct rm_result *r) {
  (void)instance;
  last_backend_id = r->backend_id;
}

/* Reports the last on_result backend id as the pick, so the test can see
 * that feedback arrived through the host. */
static int32_t echo_pick(void *instance, const struct rm_snapshot *snap,
                         const struct rm_request *req) {
  (void)instance;
  (void)req;
  for (uint32_t i = 0; i < snap->num_backends; i++) {
    if (snap->backends[i].id == last_backend_id) return (int32_t)i;
  }
  return RM_NO_PREFERENCE;
}

static const struct rm_policy_v1_future kEntry = {
    {sizeof(struct rm_policy_v1_future), RM_POLICY_ABI_MAJOR,
     RM_POLICY_ABI_MINOR + 7, "newer_minor", fixture_create, fixture_destroy,
     echo_pick, record_result},
    NULL};

const struct rm_policy_v1 *rematcher_policy_entry(void) {
  return &kEntry.v1_0;
}
