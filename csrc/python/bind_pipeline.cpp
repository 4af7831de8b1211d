#include "python/bindings.h"

namespace fastpose {
void bind_pipeline(py::module_& m) { (void)m; }
}  // namespace fastpose
