/* Broken on purpose: the entry point returns NULL. */
#include "plugins/testdata/fixture_common.h"

const struct rm_policy_v1 *rematcher_policy_entry(void) { return NULL; }
