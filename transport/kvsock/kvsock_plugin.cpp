// Placeholder until the kvsock plugin lands.
#include "kvferry/transport/net_v7.h"
