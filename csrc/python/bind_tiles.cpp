#include "python/bindings.h"

namespace fastpose {
void bind_tiles(py::module_& m) { (void)m; }
}  // namespace fastpose
