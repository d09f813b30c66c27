/* Broken on purpose: struct_size stops before pick, as a descriptor from a
 * hand-rolled or truncated header would. */
#include "plugins/testdata/fixture_common.h"

static const struct rm_policy_v1 kEntry = {
    offsetof(struct rm_policy_v1, pick), RM_POLICY_ABI_MAJOR,
    RM_POLICY_ABI_MINOR, "small_struct", fixture_create, fixture_destroy,
    fixture_pick, NULL};

const struct rm_policy_v1 *rematcher_policy_entry(void) { return &kEntry; }
