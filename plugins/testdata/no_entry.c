/* Broken on purpose: the entry point is misspelt, so dlsym finds no
 * rematcher_policy_entry (and the macro's version script exports nothing else). */
#include "plugins/testdata/fixture_common.h"

static const struct rm_policy_v1 kEntry = {
    sizeof(struct rm_policy_v1), RM_POLICY_ABI_MAJOR, RM_POLICY_ABI_MINOR,
    "no_entry", fixture_create, fixture_destroy, fixture_pick, NULL};

RM_POLICY_EXPORT const struct rm_policy_v1 *rematcher_policy_entry_v1(void) {
  return &kEntry;
}
