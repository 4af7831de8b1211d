#include "python/bindings.h"

namespace fastpose {
void bind_clustering(py::module_& m) { (void)m; }
}  // namespace fastpose
