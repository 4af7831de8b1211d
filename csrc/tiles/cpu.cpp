// CPU (OpenMP) backend of tiling and blending.
#include "common/parallel.h"
#include "tiles/tiles_backends.h"
#include "tiles/tiles_impl.h"

namespace fastpose {
namespace cpu {

void make_tiles(const float* image, int64_t B, int64_t C, const TileGrid& grid, float* tiles, const Exec& ex) {
  const int64_t n = B * grid.count() * C * grid.by * grid.bx;
  const int nt = cpu_threads(ex);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < n; ++i) tiles[i] = impl::tile_element(image, C, grid, i);
}

void blend_tiles(const float* tiles, int64_t B, int64_t C, const TileGrid& grid, int flow_y_channel,
                 int flow_x_channel, const double* wy, const double* wx, float* out, const Exec& ex) {
  const int64_t n = B * C * grid.Ly * grid.Lx;
  const int nt = cpu_threads(ex);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < n; ++i)
    out[i] = impl::blend_element(tiles, C, grid, flow_y_channel, flow_x_channel, wy, wx, i);
}

}  // namespace cpu
}  // namespace fastpose
