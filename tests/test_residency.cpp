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
  EXPECT_EQ(r.vram_budget().of(0), 1000 * MiB);
  EXPECT_EQ(r.vram_budget().of(3), 1000 * MiB);  // a plain size: every device
  r.loaded("a", 100 * MiB, false, 5min, t0, {{0, 600 * MiB}});
  r.loaded("b", 100 * MiB, false, 5min, t0 + 1s, {{0, 300 * MiB}});
  EXPECT_EQ(r.used_device_bytes(), (DeviceBytes{{0, 900 * MiB}}));
  // RAM has room for c, the device does not: the least recently used idle model goes.
  const auto dc = r.plan_load("c", 100 * MiB, {{0, 300 * MiB}});
  EXPECT_EQ(dc.kind, Kind::Load);
  EXPECT_EQ(dc.evict, std::vector<std::string>{"a"});
  // A CPU-only model (no device bytes) loads beside them.
  EXPECT_TRUE(r.plan_load("cpu", 100 * MiB, {}).evict.empty());
  // Busy: wait; pinned: impossible.
  r.begin("a", t0 + 2s);
  r.begin("b", t0 + 2s);
  EXPECT_EQ(r.plan_load("c", 100 * MiB, {{0, 300 * MiB}}).kind, Kind::Wait);
  r.end("a", t0 + 3s);
  r.end("b", t0 + 3s);
  r.set_pinned("a", true);
  r.set_pinned("b", true);
  const auto pinned = r.plan_load("c", 100 * MiB, {{0, 300 * MiB}});
  EXPECT_EQ(pinned.kind, Kind::Impossible);
  EXPECT_NE(pinned.why.find("on GPU 0 but pinned models hold 900.00 MiB of its 1000.00 MiB --vram budget"),
            std::string::npos) << pinned.why;
  const auto huge = r.plan_load("huge", 100 * MiB, {{0, 1500 * MiB}});
  EXPECT_EQ(huge.kind, Kind::Impossible);
  EXPECT_NE(huge.why.find("device memory on GPU 0, more than its whole --vram budget"), std::string::npos) << huge.why;
  // Without a device budget, device bytes do not limit anything.
  Residency n(10000 * MiB, 0);
  n.loaded("a", 100 * MiB, false, 5min, t0, {{0, 600 * MiB}});
  EXPECT_TRUE(n.plan_load("b", 100 * MiB, {{0, 50000 * MiB}}).evict.empty());
}

// Several GPUs: each has its own budget. A model counts only on the devices it uses (a draft may use a second one);
// a model on another GPU is not unloaded to make device room (it would free none there), but still is for RAM.
TEST(Residency, EachGpuHasItsOwnBudget) {
  VramBudget vb = VramBudget::parse("1000MiB,1=400MiB");
  Residency r(10000 * MiB, 0, vb);
  r.loaded("big0", 100 * MiB, false, 5min, t0, {{0, 900 * MiB}});         // oldest
  r.loaded("small1", 100 * MiB, false, 5min, t0 + 1s, {{1, 300 * MiB}});
  r.loaded("both", 100 * MiB, false, 5min, t0 + 2s, {{0, 50 * MiB}, {1, 50 * MiB}});  // target on 0, draft on 1
  EXPECT_EQ(r.used_device_bytes(), (DeviceBytes{{0, 950 * MiB}, {1, 350 * MiB}}));
  // 50 MiB on device 1 fits beside 350 of 400, although device 0 is nearly full: nothing goes.
  const auto on1 = r.plan_load("x1", 100 * MiB, {{1, 50 * MiB}});
  EXPECT_EQ(on1.kind, Kind::Load);
  EXPECT_TRUE(on1.evict.empty());
  // 100 MiB on device 1 does not fit: the least recently used model *on device 1* goes (small1), not big0, which
  // is older but holds nothing there.
  const auto more1 = r.plan_load("y1", 100 * MiB, {{1, 100 * MiB}});
  EXPECT_EQ(more1.kind, Kind::Load);
  EXPECT_EQ(more1.evict, std::vector<std::string>{"small1"});
  // 200 MiB on device 0: big0 goes (the oldest there).
  EXPECT_EQ(r.plan_load("z0", 100 * MiB, {{0, 200 * MiB}}).evict, std::vector<std::string>{"big0"});
  // A model over device 1's own budget is impossible whatever is unloaded, with the device's numbers; the same
  // bytes on device 0 fit its larger budget.
  const auto over = r.plan_load("w", 100 * MiB, {{1, 500 * MiB}});
  EXPECT_EQ(over.kind, Kind::Impossible);
  EXPECT_NE(over.why.find("500.00 MiB of device memory on GPU 1, more than its whole --vram budget of 400.00 MiB"),
            std::string::npos) << over.why;
  EXPECT_EQ(r.plan_load("w", 100 * MiB, {{0, 500 * MiB}}).kind, Kind::Load);
  // Busy models on other devices are not waited for: only a busy model on the short device is named.
  r.begin("big0", t0 + 3s);
  r.begin("small1", t0 + 3s);
  const auto wait = r.plan_load("v1", 100 * MiB, {{1, 100 * MiB}});
  EXPECT_EQ(wait.kind, Kind::Load);  // "both" is idle and frees 50 MiB on device 1: 300 + 100 <= 400
  EXPECT_EQ(wait.evict, std::vector<std::string>{"both"});
  const auto wait2 = r.plan_load("v1", 100 * MiB, {{1, 200 * MiB}});
  EXPECT_EQ(wait2.kind, Kind::Wait);
  EXPECT_NE(wait2.why.find("'small1'"), std::string::npos) << wait2.why;
  EXPECT_EQ(wait2.why.find("big0"), std::string::npos) << wait2.why;
  // RAM short: a model on another GPU is unloaded too (it frees RAM).
  Residency ram(300 * MiB, 0, vb);
  ram.loaded("on0", 100 * MiB, false, 5min, t0, {{0, 100 * MiB}});
  ram.loaded("on1", 100 * MiB, false, 5min, t0 + 1s, {{1, 100 * MiB}});
  EXPECT_EQ(ram.plan_load("more1", 200 * MiB, {{1, 100 * MiB}}).evict, std::vector<std::string>{"on0"});
  // A model that needs both GPUs, only one of them short: only models holding bytes on the short one go. Device 0
  // has no budget here (and then one with room), so the older model there stays.
  for (const char* budget : {"1=400MiB", "1000MiB,1=400MiB"}) {
    Residency two(10000 * MiB, 0, VramBudget::parse(budget));
    two.loaded("gpu0", 100 * MiB, false, 5min, t0, {{0, 300 * MiB}});  // oldest, on GPU 0 only
    two.loaded("gpu1", 100 * MiB, false, 5min, t0 + 1s, {{1, 300 * MiB}});
    EXPECT_EQ(two.plan_load("split", 100 * MiB, {{0, 300 * MiB}, {1, 200 * MiB}}).evict,
              std::vector<std::string>{"gpu1"}) << budget;
  }
}

TEST(Residency, VramBudgetsAreParsedWithClearErrors) {
  const VramBudget one = VramBudget::parse("11GiB");
  EXPECT_EQ(one.every, 11ull << 30);
  EXPECT_TRUE(one.device.empty());
  EXPECT_TRUE(one.limited());
  const VramBudget mixed = VramBudget::parse("10GiB, 1=6GiB,2 = 512MiB");
  EXPECT_EQ(mixed.of(0), 10ull << 30);
  EXPECT_EQ(mixed.of(1), 6ull << 30);
  EXPECT_EQ(mixed.of(2), 512ull << 20);
  EXPECT_EQ(mixed.of(7), 10ull << 30);
  const VramBudget only1 = VramBudget::parse("1=4GiB");
  EXPECT_EQ(only1.of(1), 4ull << 30);
  EXPECT_EQ(only1.of(0), 0u);  // no limit where none was given
  EXPECT_TRUE(only1.limited());
  EXPECT_FALSE(VramBudget().limited());
  for (const auto& [text, why] : std::vector<std::pair<std::string, std::string>>{
           {"", "an empty entry"},
           {"1GiB,", "an empty entry"},
           {"1GiB,2GiB", "two sizes for every device"},
           {"1=1GiB,1=2GiB", "device 1 is given twice"},
           {"x=1GiB", "'x' is not a device number"},
           {"256=1GiB", "'256' is not a device number"},
           {"-1=1GiB", "is not a device number"},
           {"1=0", "device 1 is given no memory"},
           {"1=lots", "lots"}}) {
    try {
      VramBudget::parse(text);
      ADD_FAILURE() << "accepted '" << text << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << text << ": " << e.what();
    }
  }
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
