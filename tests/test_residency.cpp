// Tests of runtime/residency.h: which models stay loaded under a memory budget (LRU eviction of idle models,
// pinning, a maximum count, waiting for busy models) and Ollama's keep_alive values.
#include <gtest/gtest.h>

#include "core/error.h"
#include "runtime/residency.h"

using namespace lokal;
using namespace std::chrono_literals;
using Kind = Residency::Decision::Kind;

namespace {
constexpr uint64_t MiB = 1 << 20;
const Residency::Clock::time_point t0{};
}  // namespace

TEST(Residency, TwoOfThreeFitTheThirdEvictsTheLeastRecentlyUsedIdleOne) {
  // A budget that holds two of three 400 MiB models.
  Residency r(1000 * MiB, 0);
  EXPECT_EQ(r.plan_load("a", 400 * MiB).kind, Kind::Load);
  r.loaded("a", 400 * MiB, false, 5min, t0);
  EXPECT_EQ(r.plan_load("a", 400 * MiB).kind, Kind::Ready);
  const auto db = r.plan_load("b", 400 * MiB);
  EXPECT_EQ(db.kind, Kind::Load);
  EXPECT_TRUE(db.evict.empty());
  r.loaded("b", 400 * MiB, false, 5min, t0 + 1s);
  // a is used again after b was loaded: b is now the least recently used.
  r.begin("a", t0 + 2s);
  r.end("a", t0 + 3s);
  const auto dc = r.plan_load("c", 400 * MiB);
  EXPECT_EQ(dc.kind, Kind::Load);
  EXPECT_EQ(dc.evict, std::vector<std::string>{"b"});
  r.unloaded("b");
  r.loaded("c", 400 * MiB, false, 5min, t0 + 4s);
  EXPECT_EQ(r.used_bytes(), 800 * MiB);
  // A pinned model stays even when it is the least recently used.
  r.set_pinned("a", true);
  const auto db2 = r.plan_load("b", 400 * MiB);
  EXPECT_EQ(db2.kind, Kind::Load);
  EXPECT_EQ(db2.evict, std::vector<std::string>{"c"});
  // Two evictions when one is not enough, oldest first.
  Residency s(1000 * MiB, 0);
  s.loaded("x", 300 * MiB, false, 5min, t0 + 2s);
  s.loaded("y", 300 * MiB, false, 5min, t0 + 1s);
  s.loaded("z", 300 * MiB, false, 5min, t0 + 3s);
  EXPECT_EQ(s.plan_load("big", 700 * MiB).evict, (std::vector<std::string>{"y", "x"}));
}

TEST(Residency, BusyModelsMakeTheLoadWaitPinnedOnesMakeItImpossible) {
  Residency r(1000 * MiB, 0);
  r.loaded("a", 600 * MiB, false, 5min, t0);
  r.begin("a", t0);
  // a is answering a request: b waits for it instead of evicting it.
  const auto d = r.plan_load("b", 600 * MiB);
  EXPECT_EQ(d.kind, Kind::Wait);
  EXPECT_NE(d.why.find("'a'"), std::string::npos) << d.why;
  r.end("a", t0 + 2s);
  EXPECT_EQ(r.plan_load("b", 600 * MiB).evict, std::vector<std::string>{"a"});
  // More than the whole budget, or more than pinned models leave: impossible, with the numbers.
  const auto big = r.plan_load("huge", 2000 * MiB);
  EXPECT_EQ(big.kind, Kind::Impossible);
  EXPECT_NE(big.why.find("more than the whole budget"), std::string::npos) << big.why;
  r.set_pinned("a", true);
  const auto p = r.plan_load("b", 600 * MiB);
  EXPECT_EQ(p.kind, Kind::Impossible);
  EXPECT_NE(p.why.find("pinned models hold 600.00 MiB"), std::string::npos) << p.why;
  // No budget: only the count limits.
  Residency n(0, 2);
  n.loaded("a", 1ull << 40, false, 5min, t0);
  n.loaded("b", 1ull << 40, true, 5min, t0 + 1s);
  EXPECT_EQ(n.plan_load("c", 1ull << 40).evict, std::vector<std::string>{"a"});
  n.set_pinned("a", true);
  const auto full = n.plan_load("c", 1);
  EXPECT_EQ(full.kind, Kind::Impossible);
  EXPECT_NE(full.why.find("maximum of 2 loaded models"), std::string::npos) << full.why;
}

// A device-memory budget (serve --vram) beside the RAM one: a load must fit both; eviction frees both; a model over
// the device budget alone, or over what pinned models leave of it, is impossible with the numbers.
TEST(Residency, DeviceMemoryIsASecondBudget) {
  Residency r(10000 * MiB, 0, 1000 * MiB);
  EXPECT_EQ(r.vram_budget(), 1000 * MiB);
  r.loaded("a", 100 * MiB, false, 5min, t0, 600 * MiB);
  r.loaded("b", 100 * MiB, false, 5min, t0 + 1s, 300 * MiB);
  EXPECT_EQ(r.used_device_bytes(), 900 * MiB);
  // RAM has room for c, the device does not: the least recently used idle model goes.
  const auto dc = r.plan_load("c", 100 * MiB, 300 * MiB);
  EXPECT_EQ(dc.kind, Kind::Load);
  EXPECT_EQ(dc.evict, std::vector<std::string>{"a"});
  // A CPU-only model (no device bytes) loads beside them.
  EXPECT_TRUE(r.plan_load("cpu", 100 * MiB, 0).evict.empty());
  // Busy: wait; pinned: impossible.
  r.begin("a", t0 + 2s);
  r.begin("b", t0 + 2s);
  EXPECT_EQ(r.plan_load("c", 100 * MiB, 300 * MiB).kind, Kind::Wait);
  r.end("a", t0 + 3s);
  r.end("b", t0 + 3s);
  r.set_pinned("a", true);
  r.set_pinned("b", true);
  const auto pinned = r.plan_load("c", 100 * MiB, 300 * MiB);
  EXPECT_EQ(pinned.kind, Kind::Impossible);
  EXPECT_NE(pinned.why.find("--vram"), std::string::npos) << pinned.why;
  const auto huge = r.plan_load("huge", 100 * MiB, 1500 * MiB);
  EXPECT_EQ(huge.kind, Kind::Impossible);
  EXPECT_NE(huge.why.find("device memory"), std::string::npos) << huge.why;
  // Without a device budget, device bytes do not limit anything.
  Residency n(10000 * MiB, 0);
  n.loaded("a", 100 * MiB, false, 5min, t0, 600 * MiB);
  EXPECT_TRUE(n.plan_load("b", 100 * MiB, 50000 * MiB).evict.empty());
}

TEST(Residency, KeepAliveExpiresIdleModels) {
  Residency r(0, 0);
  r.loaded("a", MiB, false, 5min, t0);
  r.loaded("forever", MiB, false, Residency::kForever, t0);
  r.loaded("pinned", MiB, true, 1s, t0);
  EXPECT_TRUE(r.expired(t0 + 4min).empty());
  EXPECT_EQ(r.expired(t0 + 5min), std::vector<std::string>{"a"});
  EXPECT_EQ(r.next_expiry(), t0 + 5min);
  // A request in flight keeps a model; its keep_alive counts from the request's end.
  r.begin("a", t0 + 1min);
  EXPECT_TRUE(r.expired(t0 + 10min).empty());
  r.end("a", t0 + 10min);
  EXPECT_TRUE(r.expired(t0 + 14min).empty());
  EXPECT_EQ(r.expired(t0 + 15min), std::vector<std::string>{"a"});
  // A request's keep_alive replaces the model's: 0 unloads as soon as it ends, even a pinned or forever model.
  r.begin("forever", t0 + 11min);
  r.end("forever", t0 + 12min, Residency::Duration(0));
  EXPECT_EQ(r.expired(t0 + 12min), std::vector<std::string>{"forever"});
  r.begin("pinned", t0 + 13min);
  r.end("pinned", t0 + 13min, Residency::Duration(0));
  EXPECT_EQ(r.expired(t0 + 13min), (std::vector<std::string>{"forever", "pinned"}));
  EXPECT_EQ(r.expired(t0 + 15min), (std::vector<std::string>{"a", "forever", "pinned"}));
  r.unloaded("a");
  r.begin("forever", t0 + 16min);  // used again: the request's 0 no longer applies until it ends
  EXPECT_EQ(r.expired(t0 + 16min), std::vector<std::string>{"pinned"});
  r.end("forever", t0 + 17min, 1h);
  EXPECT_EQ(r.next_expiry(), t0 + 13min);
  r.unloaded("pinned");
  EXPECT_EQ(r.next_expiry(), t0 + 77min);
  EXPECT_THROW(r.begin("nope", t0), Error);
}

TEST(Residency, ParsesOllamaKeepAlive) {
  using D = Residency::Duration;
  EXPECT_EQ(parse_keep_alive("5m"), D(300000));
  EXPECT_EQ(parse_keep_alive("1h30m"), D(5400000));
  EXPECT_EQ(parse_keep_alive("250ms"), D(250));
  EXPECT_EQ(parse_keep_alive("1.5s"), D(1500));
  EXPECT_EQ(parse_keep_alive("300"), D(300000));
  EXPECT_EQ(parse_keep_alive("0"), D(0));
  EXPECT_EQ(parse_keep_alive("0s"), D(0));
  EXPECT_EQ(parse_keep_alive("-1"), Residency::kForever);
  EXPECT_EQ(parse_keep_alive("-5m"), Residency::kForever);
  EXPECT_EQ(parse_keep_alive("2.5"), D(2500));
  for (const char* bad : {"", "5 m", "m", "5x", "five", "-", "1h-5m", " 5", "5m ", "nan", "inf", "1e999"})
    EXPECT_THROW(parse_keep_alive(bad), Error) << bad;
}
