/* Broken on purpose: pick() returns num_backends (one past the end) on odd
 * calls and backend 0 on even ones, so the test sees both outcomes counted. */
#include "plugins/testdata/fixture_common.h"

struct counter {
  unsigned calls;
};

static void *oor_create(const char *args, char *err, size_t err_len) {
  (void)args;
  (void)err;
  (void)err_len;
  return calloc(1, sizeof(struct counter));
}

static int32_t oor_pick(void *instance, const struct rm_snapshot *snap,
                        const struct rm_request *req) {
  struct counter *c = (struct counter *)instance;
  (void)req;
  return (c->calls++ % 2 == 0) ? (int32_t)snap->num_backends : 0;
}

static const struct rm_policy_v1 kEntry = {
    sizeof(struct rm_policy_v1), RM_POLICY_ABI_MAJOR, RM_POLICY_ABI_MINOR,
    "out_of_range", oor_create, fixture_destroy, oor_pick, NULL};

const struct rm_policy_v1 *rematcher_policy_entry(void) { return &kEntry; }
