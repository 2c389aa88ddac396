/* placeholder */
#include <errno.h>
#include "internal.h"
RAWTRACK_API int rawtrack_image_check (struct rawtrack_image *img, unsigned repair, struct rawtrack_check_result *res, rawtrack_check_report_fn report, void *opaque) { return set_error (ENOTSUP, "not yet"); }
