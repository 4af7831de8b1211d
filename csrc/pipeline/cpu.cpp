// CPU backend of the pipeline glue.
#include "common/parallel.h"
#include "pipeline/pipeline_backends.h"
#include "pipeline/pipeline_impl.h"

namespace fastpose {
namespace cpu {

void threshold_mask(const float* prob, int64_t n, float threshold, uint8_t* mask, const Exec& ex) {
  const int nt = cpu_threads(ex);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < n; ++i) mask[i] = impl::threshold_pixel(prob[i], threshold);
}

}  // namespace cpu
}  // namespace fastpose
