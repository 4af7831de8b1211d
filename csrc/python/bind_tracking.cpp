#include "python/bindings.h"

namespace fastpose {
void bind_tracking(py::module_& m) { (void)m; }
}  // namespace fastpose
