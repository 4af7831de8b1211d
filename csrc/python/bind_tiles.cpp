// Bindings of tiling and taper blending.
#include <string>
#include <vector>

#include "fastpose/tiles.hpp"
#include "python/bindings.h"
#include "tiles/tiles_impl.h"

namespace fastpose {

namespace {

std::vector<int64_t> starts(int64_t n, int64_t L, int64_t b, bool augment) {
  std::vector<int64_t> s(size_t(n > 0 ? n : 0));
  const int64_t E = impl::tiled_extent(L, b, augment);
  for (int64_t j = 0; j < n; ++j) s[size_t(j)] = impl::tile_start(j, n, E, b);
  return s;
}

}  // namespace

void bind_tiles(py::module_& m) {
  py::class_<TileGrid>(m, "TileGrid", "Geometry of the tiles of an Ly x Lx image (make with plan_tiles).")
      .def_readonly("Ly", &TileGrid::Ly, "image rows")
      .def_readonly("Lx", &TileGrid::Lx, "image columns")
      .def_readonly("by", &TileGrid::by, "tile rows")
      .def_readonly("bx", &TileGrid::bx, "tile columns")
      .def_readonly("ny", &TileGrid::ny, "number of tile rows")
      .def_readonly("nx", &TileGrid::nx, "number of tile columns")
      .def_readonly("augment", &TileGrid::augment, "tiles flipped in Cellpose's pattern")
      .def_property_readonly("count", &TileGrid::count, "number of tiles ny * nx")
      .def_property_readonly(
          "ystart", [](const TileGrid& g) { return starts(g.ny, g.Ly, g.by, g.augment); }, "first row of each tile row")
      .def_property_readonly(
          "xstart", [](const TileGrid& g) { return starts(g.nx, g.Lx, g.bx, g.augment); },
          "first column of each tile column")
      .def_property_readonly(
          "flips",
          [](const TileGrid& g) {
            std::vector<int> f(size_t(g.ny * g.nx), 0);
            if (g.augment)
              for (int64_t j = 0; j < g.ny; ++j)
                for (int64_t i = 0; i < g.nx; ++i) f[size_t(j * g.nx + i)] = impl::tile_flip(j, i);
            return f;
          },
          "per tile (index j * nx + i): bit 0 flipped in Y, bit 1 flipped in X")
      .def("__eq__",
           [](const TileGrid& a, const TileGrid& b) {
             return a.Ly == b.Ly && a.Lx == b.Lx && a.by == b.by && a.bx == b.bx && a.ny == b.ny && a.nx == b.nx &&
                    a.augment == b.augment;
           })
      .def("__repr__", [](const TileGrid& g) {
        return "TileGrid(Ly=" + std::to_string(g.Ly) + ", Lx=" + std::to_string(g.Lx) + ", by=" + std::to_string(g.by) +
               ", bx=" + std::to_string(g.bx) + ", ny=" + std::to_string(g.ny) + ", nx=" + std::to_string(g.nx) +
               ", augment=" + (g.augment ? "True" : "False") + ")";
      });
  m.def("plan_tiles", &plan_tiles, py::arg("Ly"), py::arg("Lx"), py::arg("bsize"), py::arg("overlap"),
        py::arg("augment"));
  m.def(
      "tile_taper",
      [](int64_t ly, int64_t lx) {
        if (ly < 0 || lx < 0) throw ArgumentError("tile_taper: negative tile size");
        const int64_t bs = impl::taper_size(ly, lx);
        std::vector<double> wy(static_cast<size_t>(ly)), wx(static_cast<size_t>(lx));
        for (int64_t t = 0; t < ly; ++t) wy[size_t(t)] = impl::taper_1d(t, ly, bs);
        for (int64_t t = 0; t < lx; ++t) wx[size_t(t)] = impl::taper_1d(t, lx, bs);
        return std::make_pair(wy, wx);
      },
      py::arg("ly"), py::arg("lx"), "1D taper vectors (wy, wx) of a ly x lx tile; the 2D taper is wy[:, None] * wx");
  m.def(
      "make_tiles",
      [](std::uintptr_t image, int64_t B, int64_t C, const TileGrid& grid, std::uintptr_t tiles, int device,
         std::uintptr_t stream, int nthreads) {
        make_tiles(ptr<const float>(image), B, C, grid, ptr<float>(tiles), to_exec(device, stream, nthreads));
      },
      py::arg("image"), py::arg("B"), py::arg("C"), py::arg("grid"), py::arg("tiles"), py::arg("device"),
      py::arg("stream"), py::arg("num_threads"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "blend_tiles",
      [](std::uintptr_t tiles, int64_t B, int64_t C, const TileGrid& grid, int flow_y, int flow_x, std::uintptr_t out,
         int device, std::uintptr_t stream, int nthreads) {
        blend_tiles(ptr<const float>(tiles), B, C, grid, flow_y, flow_x, ptr<float>(out),
                    to_exec(device, stream, nthreads));
      },
      py::arg("tiles"), py::arg("B"), py::arg("C"), py::arg("grid"), py::arg("flow_y_channel"),
      py::arg("flow_x_channel"), py::arg("out"), py::arg("device"), py::arg("stream"), py::arg("num_threads"),
      py::call_guard<py::gil_scoped_release>());
}

}  // namespace fastpose
