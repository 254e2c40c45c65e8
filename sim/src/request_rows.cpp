// One request's row and figures (request_rows.hpp).
#include "request_rows.hpp"

#include <algorithm>
#include <stdexcept>

namespace kvferry::sim {

void record(summary& s, const request_row& r, double ttft_slo_ms) {
  auto& t = s.ttft;
  histogram* hs[5] = {&t.queue, &t.prefill, &t.wait, &t.transfer, &t.decode};
  for (int i = 0; i < 5; ++i)
    hs[i]->add(std::uint64_t(std::max<std::int64_t>(0, r.parts[i])));
  t.total.add(std::uint64_t(r.ttft));
  s.transfer_time.add(std::uint64_t(r.transfer_total));
  s.e2e.add(std::uint64_t(r.e2e));
  s.bytes_moved += r.bytes;
  s.bytes_saved += r.saved;
  ++(r.ipc ? s.ipc_transfers : s.net_transfers);
  if (ttft_slo_ms > 0 && double(r.ttft) <= ttft_slo_ms * 1e6)
    ++s.slo_met;
}

request_csv::request_csv(const std::string& dir) {
  if (dir.empty())
    return;
  path_ = dir + "/requests.csv";
  out_.open(path_, std::ios::binary | std::ios::trunc);
  if (!out_)
    throw std::runtime_error("cannot write " + path_);
  put("index,line,arrival_ms,input_tokens,output_tokens,prefill_worker,"
      "decode_worker,path,status,queue_ms,prefill_ms,wait_ms,transfer_ms,"
      "decode_ms,ttft_ms,transfer_total_ms,e2e_ms,bytes_moved,bytes_saved",
      '\n');
}

void request_csv::row(const request_row& r) {
  if (path_.empty())
    return;
  put(r.trace->index);
  put(r.trace->line);
  put_ms(r.arrival);
  put(r.trace->input_tokens);
  put(r.trace->output_tokens);
  put(r.prefill);
  put(r.decode);
  put(r.ipc ? "ipc" : "net");
  if (r.what == request_row::status::rejected) {
    put("rejected,,,,,,,,,0,0", '\n');
  } else if (r.what == request_row::status::failed) {
    put("failed,,,,,,,,,0,0", '\n');
  } else if (r.what == request_row::status::unfinished) {
    put("unfinished,,,,,,,,,0,0", '\n');
  } else {
    put("ok");
    for (auto part : r.parts)
      put_ms(part);
    put_ms(r.ttft);
    put_ms(r.transfer_total);
    put_ms(r.e2e);
    put(std::uint64_t(r.bytes));
    put(std::uint64_t(r.saved), '\n');
  }
  if (buffer_.size() > (1u << 20))
    flush();
}

void request_csv::close() {
  if (path_.empty())
    return;
  flush();
  out_.close();
}

// "12.345,": ms with three decimals, by integer arithmetic.
void request_csv::put_ms(std::int64_t ns) {
  auto us = (std::max<std::int64_t>(0, ns) + 500) / 1000;
  put(std::uint64_t(us / 1000), '.');
  auto frac = us % 1000;
  const char tail[4] = {char('0' + frac / 100), char('0' + frac / 10 % 10),
                        char('0' + frac % 10), ','};
  buffer_.append(tail, tail + 4);
}

// A CSV field and what ends it.
void request_csv::put(std::uint64_t value, char end) {
  fmt::format_int text(value);
  buffer_.append(text.data(), text.data() + text.size());
  buffer_.push_back(end);
}

void request_csv::put(std::string_view text, char end) {
  buffer_.append(text.data(), text.data() + text.size());
  buffer_.push_back(end);
}

void request_csv::flush() {
  out_.write(buffer_.data(), std::streamsize(buffer_.size()));
  buffer_.clear();
  if (!out_)
    throw std::runtime_error("cannot write " + path_);
}

} // namespace kvferry::sim
