// Backend entry points of the flow targets and flow-error QC (see fastpose/flows.hpp).  The host wrapper
// (flows.cpp) has checked the shape, the pointers, nlabels >= 0 and the label values (checked_max_label,
// which also gives maxlab); compute_masks calls remove_bad_flow_masks directly with get_masks' mask count.
#pragma once

#include <cstdint>

#include "common/dispatch.h"
#include "fastpose/common.hpp"

namespace fastpose {

FP_BACKEND_API(
    // labels: [Z, Y, X] int32 in [0, maxlab]; flows: [ndim, Z, Y, X] float32 output; niter <= 0: the default
    void masks_to_flows(const int32_t* labels, const Shape& shape, int64_t maxlab, float* flows, int niter,
                        const Exec& ex);
    // labels: [Z, Y, X] int32 in [0, maxlab], maxlab <= nlabels; dP: [ndim, Z, Y, X] float32;
    // errors: [nlabels] float32 output (0 for absent labels)
    void flow_errors(const int32_t* labels, const Shape& shape, const float* dP, int64_t maxlab, int64_t nlabels,
                     float* errors, const Exec& ex);
    // labels: [Z, Y, X] int32 in [0, maxlab], modified in place; dP: [ndim, Z, Y, X] float32.  Returns the
    // number of masks removed.
    int64_t remove_bad_flow_masks(int32_t* labels, const Shape& shape, const float* dP, int64_t maxlab,
                                  float threshold, const Exec& ex);)

}  // namespace fastpose
