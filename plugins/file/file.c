/* file.c - the `file` plugin: NDJSON files as an input (file_input.c) and as
 * a publish target (file_publish.c).  Useful on its own for batch imports
 * and audit trails, and the simplest way to drive a pipeline in tests. */
#include "file.h"

static const orderd_stage *const file_stages[] = {
    &file_input_stage,
    &file_publish_stage,
    NULL
};

ORDERD_PLUGIN(.name = "file",
              .version = "1.0",
              .description = "NDJSON files: read lines as messages, append messages as lines",
              .maintainer = "orderd developers",
              .stages = file_stages);
