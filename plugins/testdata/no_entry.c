/* Broken on purpose: exports a misspelt entry point, so dlsym finds nothing. */
#include "plugins/testdata/fixture_common.h"

static const struct rm_policy_v1 kEntry = {
    sizeof(struct rm_policy_v1), RM_POLICY_ABI_MAJOR, RM_POLICY_ABI_MINOR,
    "no_entry", fixture_create, fixture_destroy, fixture_pick, NULL};

RM_POLICY_EXPORT const struct rm_policy_v1 *rematcher_policy_entry_v1(void) {
  return &kEntry;
}
