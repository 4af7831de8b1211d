// fastpose: umbrella header of the public C++ API.
#pragma once

#include "fastpose/clustering.hpp"
#include "fastpose/common.hpp"
#include "fastpose/config.hpp"
#include "fastpose/flows.hpp"
#include "fastpose/masks.hpp"
#include "fastpose/meanshift.hpp"
#include "fastpose/pipeline.hpp"
#include "fastpose/tiles.hpp"
#include "fastpose/tracking.hpp"
#if FASTPOSE_BUILT_WITH_TENSORRT
#include "fastpose/trt_segmenter.hpp"
#endif
