/* Broken on purpose: claims the next major ABI version. */
#include "plugins/testdata/fixture_common.h"

static const struct rm_policy_v1 kEntry = {
    sizeof(struct rm_policy_v1), RM_POLICY_ABI_MAJOR + 1, 0,
    "wrong_major", fixture_create, fixture_destroy, fixture_pick, NULL};

const struct rm_policy_v1 *rematcher_policy_entry(void) { return &kEntry; }
