// Placeholder: the C++ convenience header over tern.h (being written).
#pragma once
#include "tern/tern.h"
