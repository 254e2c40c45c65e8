#include "kvferry/runtime/version.hpp"
