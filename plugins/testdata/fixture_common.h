/* Working create/destroy/pick for the broken-plugin fixtures: each fixture
 * breaks exactly ONE thing in its descriptor (or symbol), so the loader test
 * can tell which check caught it. */
#ifndef REMATCHER_PLUGINS_TESTDATA_FIXTURE_COMMON_H_
#define REMATCHER_PLUGINS_TESTDATA_FIXTURE_COMMON_H_

#include <stdlib.h>

#include "plugins/rematcher_policy.h"

__attribute__((unused)) static void *fixture_create(const char *args, char *err, size_t err_len) {
  (void)args;
  (void)err;
  (void)err_len;
  return malloc(1);
}

__attribute__((unused)) static void fixture_destroy(void *instance) { free(instance); }

/* Always backend 0. */
__attribute__((unused)) static int32_t fixture_pick(void *instance, const struct rm_snapshot *snap,
                            const struct rm_request *req) {
  (void)instance;
  (void)req;
  return snap->num_backends > 0 ? 0 : RM_NO_PREFERENCE;
}

#endif
