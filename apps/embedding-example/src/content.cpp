#include "content.hpp"

#include <cinttypes>
#include <cstdio>

namespace example {

namespace {

std::uint64_t* half_words(const kvferry::kv_layout& layout,
                          const std::vector<void*>& bases, std::uint32_t layer,
                          int half, std::uint64_t block) {
  const auto at =
      layout.locate(layer, static_cast<kvferry::kv_half>(half), block);
  return reinterpret_cast<std::uint64_t*>(static_cast<char*>(bases[at.region]) +
                                          at.offset);
}

} // namespace

void write_layer_host(const kvferry::kv_layout& layout,
                      const std::vector<void*>& bases, std::uint64_t request,
                      std::uint32_t layer,
                      const std::vector<std::uint64_t>& blocks) {
  const std::uint64_t words = layout.block_bytes() / 8;
  for (int half = 0; half < 2; ++half)
    for (std::uint64_t i = 0; i < blocks.size(); ++i) {
      auto* w = half_words(layout, bases, layer, half, blocks[i]);
      const auto seed = half_seed(request, layer, i, half);
      for (std::uint64_t k = 0; k < words; ++k)
        w[k] = kv_word(seed, k);
    }
}

std::string verify_request_host(const kvferry::kv_layout& layout,
                                const std::vector<void*>& bases,
                                std::uint64_t request,
                                const std::vector<std::uint64_t>& blocks) {
  const std::uint64_t words = layout.block_bytes() / 8;
  for (std::uint32_t layer = 0; layer < layout.layers(); ++layer)
    for (int half = 0; half < 2; ++half)
      for (std::uint64_t i = 0; i < blocks.size(); ++i) {
        const auto* w = half_words(layout, bases, layer, half, blocks[i]);
        const auto seed = half_seed(request, layer, i, half);
        for (std::uint64_t k = 0; k < words; ++k)
          if (w[k] != kv_word(seed, k))
            return describe_mismatch(request, layer, half, i, blocks[i], k,
                                     w[k]);
      }
  return {};
}

std::string describe_mismatch(std::uint64_t request, std::uint32_t layer,
                              int half, std::uint64_t index,
                              std::uint64_t block, std::uint64_t word,
                              std::uint64_t got) {
  char text[200];
  std::snprintf(text, sizeof text,
                "request %" PRIu64 " layer %u %c block #%" PRIu64
                " (id %" PRIu64 ") word %" PRIu64 ": 0x%016" PRIx64
                " != expected 0x%016" PRIx64,
                request, layer, half == 0 ? 'K' : 'V', index, block, word, got,
                kv_word(half_seed(request, layer, index, half), word));
  return text;
}

} // namespace example
