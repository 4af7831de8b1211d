#include "python/bindings.h"

namespace fastpose {
void bind_masks(py::module_& m) { (void)m; }
}  // namespace fastpose
