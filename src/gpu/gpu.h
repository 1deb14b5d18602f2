// gpu/gpu.h - Vulkan compute: devices, buffers, pipelines, command submission.
//
// The device layer of GPU offload. Nothing here knows about models: it moves bytes to and from a device and runs
// compute shaders on them (the shaders and their host-side entry points are in gpu/kernels.h).
//
//   auto dev = gpu::Device::open(0);              // throws lokal::Error when there is no loader or no device
//   gpu::Buffer w = dev->alloc(bytes);            // device-local storage buffer (gpu::OutOfMemory when too big)
//   dev->upload(w, host_ptr, bytes);              // through a host-visible staging buffer, waits for completion
//   gpu::Commands cmd(*dev);                      // one command buffer
//   cmd.dispatch(pipeline, {&w, &x, &y}, &push, sizeof push, groups_x);
//   cmd.submit_and_wait();                        // builds the command buffer, runs it, waits
//   dev->download(y, host_out, bytes);
//
// Every object is RAII and move-only; buffers, pipelines and command buffers keep their Device alive
// (shared_ptr), so destruction order never matters. A Device is used by one thread at a time.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/error.h"
#include "gpu/vk_api.h"

namespace lokal::gpu {

// An allocation the device cannot satisfy (larger than its memory heap, than its largest single allocation, or
// refused by the driver). what() names the byte count asked for and the device.
class OutOfMemory : public Error {
 public:
  OutOfMemory(const std::string& msg, uint64_t bytes) : Error(msg), bytes_(bytes) {}
  uint64_t bytes() const { return bytes_; }

 private:
  uint64_t bytes_;
};

struct DeviceInfo {
  uint32_t index = 0;              // position in vkEnumeratePhysicalDevices order (Device::open's argument)
  std::string name;                // "llvmpipe (LLVM 15.0.6, 256 bits)", "NVIDIA GeForce RTX 4090"
  std::string type;                // "discrete", "integrated", "virtual", "cpu", "other"
  std::string driver;              // driver name and info, "llvmpipe Mesa 22.3.6 (LLVM 15.0.6)"
  uint32_t api_version = 0;        // VK_MAKE_API_VERSION value
  uint64_t device_local_bytes = 0;  // sum of the DEVICE_LOCAL memory heaps
  uint64_t max_allocation_bytes = 0;  // maxMemoryAllocationSize (largest single allocation)
  uint64_t max_storage_buffer_bytes = 0;  // maxStorageBufferRange (largest buffer one shader binding may see;
                                          // LOKAL_GPU_MAX_BINDING=BYTES lowers it)
  bool fp16 = false;               // shaderFloat16: half-precision arithmetic in shaders
  bool int8 = false;               // shaderInt8: 8-bit integer arithmetic in shaders
  bool int8_dot = false;           // shaderIntegerDotProduct (VK_KHR_shader_integer_dot_product / Vulkan 1.3)
  bool int8_dot_accelerated = false;  // integerDotProduct4x8BitPackedSignedAccelerated
  uint32_t subgroup_size = 0;      // default subgroup size of compute shaders
  bool subgroup_arithmetic = false;  // subgroupAdd & co. in compute shaders (VK_SUBGROUP_FEATURE_ARITHMETIC_BIT)
  bool int8_dot_by_extension = false;  // int8_dot comes from the extension (device or instance below Vulkan 1.3)
  uint32_t max_workgroup_size[3] = {0, 0, 0};
  uint32_t max_workgroup_invocations = 0;
  uint32_t max_workgroup_count[3] = {0, 0, 0};

  std::string api_string() const;  // "1.3.230"
};

class Instance;

// Every Vulkan device on this machine. Throws lokal::Error "no Vulkan loader (libvulkan.so.1) found" when the loader
// cannot be loaded or gives no instance; returns an empty list when the loader finds no device.
std::vector<DeviceInfo> list_devices();

// list_devices() without throwing: the devices, or none and *why set to the one-line reason ("no Vulkan loader
// (libvulkan.so.1) found ...", "no Vulkan device found").
std::vector<DeviceInfo> list_devices(std::string* why);

// Either "" (at least one device) or the one-line reason there is none, for messages such as `lokal info --devices`.
std::string no_device_reason();

// Why device `index` is not among n_devices ("" when it is): "no Vulkan device found" or "Vulkan device 3 does not
// exist (1 found: 0..0)" (Device::open's message).
std::string missing_device_reason(uint32_t index, size_t n_devices);

class Buffer;
class Pipeline;

class Device : public std::enable_shared_from_this<Device> {
 public:
  // Opens device `index` of list_devices() with one compute queue. Throws lokal::Error: no loader, "no Vulkan
  // device found", an index out of range, or a device without a compute queue.
  static std::shared_ptr<Device> open(uint32_t index = 0);
  ~Device();
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  const DeviceInfo& info() const { return info_; }

  // A device-local storage buffer of `bytes` (rounded up to a multiple of 16, so shaders may read whole 32-bit
  // words past an odd-sized end). Throws OutOfMemory when the device cannot hold it.
  Buffer alloc(uint64_t bytes);
  // The bytes alloc(bytes) and staging(bytes) take (for memory planning without a device).
  static uint64_t allocation_bytes(uint64_t bytes) { return bytes < 16 ? 16 : (bytes + 15) & ~uint64_t(15); }
  // A host-visible, host-coherent, mapped buffer (staging for upload/download).
  Buffer staging(uint64_t bytes);

  // Copies host bytes into `dst` at `offset` (through a staging buffer; returns when the copy is complete).
  void upload(Buffer& dst, const void* src, uint64_t bytes, uint64_t offset = 0);
  // Copies `bytes` from `src` at `offset` to host memory (returns when they are there).
  void download(const Buffer& src, void* dst, uint64_t bytes, uint64_t offset = 0);

  // A compute pipeline from SPIR-V words whose shader binds `n_buffers` storage buffers (bindings 0..n-1 of set 0)
  // and takes `push_bytes` of push constants.
  Pipeline pipeline(std::span<const uint32_t> spirv, uint32_t n_buffers, uint32_t push_bytes, const char* name);

  // Command buffers run on this device so far (Commands::submit_and_wait).
  struct SubmitStats {
    uint64_t submits = 0;     // command buffers submitted
    uint64_t reused = 0;      // of which a CommandCache's, built for an earlier submission
    uint64_t dispatches = 0;  // dispatches in them
    double host_s = 0;        // from each Commands' construction to its submission: the host's recording + building
    double wait_s = 0;        // from each submission to the end of its wait: the device's work
  };
  const SubmitStats& submit_stats() const { return stats_; }

  // Internals for Buffer/Pipeline/Commands.
  const VkFns& vk() const;
  VkDevice handle() const { return device_; }
  VkQueue queue() const { return queue_; }
  VkCommandPool command_pool() const { return pool_; }

 private:
  Device() = default;
  uint32_t memory_type(uint32_t type_bits, VkMemoryPropertyFlags want, VkMemoryPropertyFlags avoid) const;
  Buffer make_buffer(uint64_t bytes, bool host_visible);

  std::shared_ptr<Instance> instance_;
  DeviceInfo info_;
  VkPhysicalDevice physical_ = VK_NULL_HANDLE;
  VkPhysicalDeviceMemoryProperties mem_{};
  VkDevice device_ = VK_NULL_HANDLE;
  VkQueue queue_ = VK_NULL_HANDLE;
  uint32_t queue_family_ = 0;
  VkCommandPool pool_ = VK_NULL_HANDLE;
  SubmitStats stats_;
  friend class Buffer;
  friend class Commands;
  friend class CommandCache;
};

class Buffer {
 public:
  Buffer() = default;
  Buffer(Buffer&& o) noexcept { *this = std::move(o); }
  Buffer& operator=(Buffer&& o) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { reset(); }
  void reset();

  explicit operator bool() const { return buffer_ != VK_NULL_HANDLE; }
  uint64_t size() const { return size_; }      // usable bytes (as allocated, after rounding)
  void* mapped() const { return mapped_; }     // host pointer of a staging buffer, nullptr for device buffers
  VkBuffer handle() const { return buffer_; }
  uint64_t id() const { return id_; }  // serial number, unique in the process (0: empty)

 private:
  friend class Device;
  std::shared_ptr<Device> dev_;
  VkBuffer buffer_ = VK_NULL_HANDLE;
  VkDeviceMemory memory_ = VK_NULL_HANDLE;
  uint64_t size_ = 0;
  void* mapped_ = nullptr;
  uint64_t id_ = 0;
};

class Pipeline {
 public:
  Pipeline() = default;
  Pipeline(Pipeline&& o) noexcept { *this = std::move(o); }
  Pipeline& operator=(Pipeline&& o) noexcept;
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;
  ~Pipeline() { reset(); }
  void reset();

  explicit operator bool() const { return pipeline_ != VK_NULL_HANDLE; }
  uint32_t n_buffers() const { return n_buffers_; }
  uint32_t push_bytes() const { return push_bytes_; }
  const std::string& name() const { return name_; }
  VkPipeline handle() const { return pipeline_; }
  VkPipelineLayout layout() const { return layout_; }
  VkDescriptorSetLayout set_layout() const { return set_layout_; }
  uint64_t id() const { return id_; }  // serial number, unique in the process (0: empty)

 private:
  friend class Device;
  std::shared_ptr<Device> dev_;
  VkShaderModule module_ = VK_NULL_HANDLE;
  VkDescriptorSetLayout set_layout_ = VK_NULL_HANDLE;
  VkPipelineLayout layout_ = VK_NULL_HANDLE;
  VkPipeline pipeline_ = VK_NULL_HANDLE;
  uint32_t n_buffers_ = 0, push_bytes_ = 0;
  uint64_t id_ = 0;
  std::string name_;
};

namespace detail {
// One recorded command (Commands' list; compared by CommandCache). Buffers and pipelines are named by their serial
// numbers (never reused, unlike Vulkan handles) for the comparison and by their handles for building.
struct Op {
  enum Kind : uint32_t { kDispatch, kCopy, kBarrier };
  static constexpr uint32_t kMaxBuffers = 8;  // bindings of one dispatch
  Kind kind = kBarrier;
  uint32_t n_buffers = 0, push_bytes = 0, push_offset = 0;  // push constants: push_offset into Commands' push bytes
  uint32_t groups[3] = {0, 0, 0};
  uint64_t pipeline_id = 0;
  uint64_t buffer_ids[kMaxBuffers] = {};           // dispatch: bindings 0..n_buffers-1; copy: source, destination
  uint64_t copy_region[3] = {0, 0, 0};             // copy: source offset, destination offset, bytes
  VkPipeline pipeline = VK_NULL_HANDLE;            // (handles: not compared)
  VkPipelineLayout layout = VK_NULL_HANDLE;
  VkDescriptorSetLayout set_layout = VK_NULL_HANDLE;
  VkBuffer buffers[kMaxBuffers] = {};
};
bool same_op(const Op& a, const Op& b);
struct Built;  // a command buffer built from a list of Ops, with its descriptor sets
}  // namespace detail

// The command buffers of a repeated step, kept to be submitted again. A decode step records the same commands
// step after step: the same kernels on the same buffers with the same push constants and workgroup counts (what
// changes between steps is data in buffers: the hidden state, positions, page tables). Commands made with a cache
// compare what they recorded with the cache's last few command buffers when submitted and, on a match, submit
// that command buffer again instead of building a new one (no descriptor sets, no vkCmd* calls: the host's share
// of a step shrinks to the recording of the list itself). A buffer freed since can never match, since buffers are
// compared by serial numbers that are never reused. One thread at a time, as its Device; LOKAL_GPU_REUSE=0 turns
// reuse off (every submission builds its command buffer, as without a cache).
class CommandCache {
 public:
  explicit CommandCache(Device& dev, size_t capacity = 4);
  ~CommandCache();
  CommandCache(const CommandCache&) = delete;
  CommandCache& operator=(const CommandCache&) = delete;

  bool enabled() const { return enabled_; }
  uint64_t hits() const { return hits_; }      // submissions that reused a built command buffer
  uint64_t misses() const { return misses_; }  // submissions that built one (and kept it, evicting the oldest)
  size_t size() const { return entries_.size(); }

 private:
  friend class Commands;
  std::shared_ptr<Device> dev_;
  VkCommandPool pool_ = VK_NULL_HANDLE;
  std::vector<std::unique_ptr<detail::Built>> entries_;  // most recently used first
  size_t capacity_;
  bool enabled_;
  uint64_t hits_ = 0, misses_ = 0;
};

// Records commands; submit_and_wait() runs them as one primary command buffer and blocks until the device is done.
// Recording only lists the commands (after checking them); the command buffer and its descriptor sets are built
// at submission (or taken from `cache`, see CommandCache) and live as long as the Commands object (or the cache).
class Commands {
 public:
  explicit Commands(Device& dev, CommandCache* cache = nullptr);
  ~Commands();
  Commands(const Commands&) = delete;
  Commands& operator=(const Commands&) = delete;

  // Binds `buffers` (whole buffers, in binding order) and `push` (pipeline.push_bytes() bytes) and dispatches
  // groups_x * groups_y * groups_z workgroups. Throws lokal::Error on a count/size mismatch or a buffer larger
  // than the device lets one binding see.
  void dispatch(const Pipeline& p, std::initializer_list<const Buffer*> buffers, const void* push, uint32_t push_bytes,
                uint32_t groups_x, uint32_t groups_y = 1, uint32_t groups_z = 1);
  void copy(const Buffer& src, Buffer& dst, uint64_t bytes, uint64_t src_offset = 0, uint64_t dst_offset = 0);
  // Makes the writes of every earlier dispatch/copy visible to every later one (compute and transfer).
  void barrier();
  // Builds (or reuses) the command buffer, submits it, waits on a fence. The object cannot record again afterwards.
  void submit_and_wait();

 private:
  std::shared_ptr<Device> dev_;
  CommandCache* cache_;
  std::vector<detail::Op> ops_;
  std::vector<uint8_t> push_;  // every dispatch's push constants, back to back
  std::unique_ptr<detail::Built> own_;  // the command buffer built without a cache
  int64_t start_ns_ = 0;
  bool ended_ = false;
};

}  // namespace lokal::gpu
