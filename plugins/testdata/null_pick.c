/* Broken on purpose: the required pick function is NULL. */
#include "plugins/testdata/fixture_common.h"

static const struct rm_policy_v1 kEntry = {
    sizeof(struct rm_policy_v1), RM_POLICY_ABI_MAJOR, RM_POLICY_ABI_MINOR,
    "null_pick", fixture_create, fixture_destroy, NULL, NULL};

const struct rm_policy_v1 *rematcher_policy_entry(void) { return &kEntry; }
