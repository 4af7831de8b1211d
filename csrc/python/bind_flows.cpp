#include "python/bindings.h"

namespace fastpose {
void bind_flows(py::module_& m) { (void)m; }
}  // namespace fastpose
