/* Broken on purpose: create() always fails, with a message naming the args. */
#include <stdio.h>

#include "plugins/testdata/fixture_common.h"

static void *failing_create(const char *args, char *err, size_t err_len) {
  snprintf(err, err_len, "create_fails does not like '%s'", args);
  return NULL;
}

static const struct rm_policy_v1 kEntry = {
    sizeof(struct rm_policy_v1), RM_POLICY_ABI_MAJOR, RM_POLICY_ABI_MINOR,
    "create_fails", failing_create, fixture_destroy, fixture_pick, NULL};

const struct rm_policy_v1 *rematcher_policy_entry(void) { return &kEntry; }
