// gpu/device.cpp - the Vulkan loader, instance, devices, buffers, pipelines and command buffers (gpu/gpu.h).
#include <dlfcn.h>
#include <link.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <utility>

#include "gpu/gpu.h"

namespace lokal::gpu {

const char* vk_result_name(VkResult r) {
  switch (r) {
    case VK_SUCCESS: return "VK_SUCCESS";
    case VK_NOT_READY: return "VK_NOT_READY";
    case VK_TIMEOUT: return "VK_TIMEOUT";
    case VK_INCOMPLETE: return "VK_INCOMPLETE";
    case VK_ERROR_OUT_OF_HOST_MEMORY: return "VK_ERROR_OUT_OF_HOST_MEMORY";
    case VK_ERROR_OUT_OF_DEVICE_MEMORY: return "VK_ERROR_OUT_OF_DEVICE_MEMORY";
    case VK_ERROR_INITIALIZATION_FAILED: return "VK_ERROR_INITIALIZATION_FAILED";
    case VK_ERROR_DEVICE_LOST: return "VK_ERROR_DEVICE_LOST";
    case VK_ERROR_MEMORY_MAP_FAILED: return "VK_ERROR_MEMORY_MAP_FAILED";
    case VK_ERROR_LAYER_NOT_PRESENT: return "VK_ERROR_LAYER_NOT_PRESENT";
    case VK_ERROR_EXTENSION_NOT_PRESENT: return "VK_ERROR_EXTENSION_NOT_PRESENT";
    case VK_ERROR_FEATURE_NOT_PRESENT: return "VK_ERROR_FEATURE_NOT_PRESENT";
    case VK_ERROR_INCOMPATIBLE_DRIVER: return "VK_ERROR_INCOMPATIBLE_DRIVER";
    case VK_ERROR_TOO_MANY_OBJECTS: return "VK_ERROR_TOO_MANY_OBJECTS";
    case VK_ERROR_FRAGMENTED_POOL: return "VK_ERROR_FRAGMENTED_POOL";
    case VK_ERROR_OUT_OF_POOL_MEMORY: return "VK_ERROR_OUT_OF_POOL_MEMORY";
    default: return "VkResult error";
  }
}

namespace {

// A zero-initialized Vulkan struct with its sType set (brace-initializing only sType trips -Wmissing-field-initializers).
template <class T>
T vk_struct(VkStructureType type) {
  T t{};
  t.sType = type;
  return t;
}

void check(VkResult r, const char* what) {
  if (r != VK_SUCCESS) throw Error(std::string("Vulkan: ") + what + " failed (" + vk_result_name(r) + ")");
}

std::string bytes_text(uint64_t b) {
  char buf[64];
  const double v = static_cast<double>(b);
  if (v >= 1024.0 * 1024 * 1024)
    std::snprintf(buf, sizeof buf, "%.2f GiB", v / (1024.0 * 1024 * 1024));
  else if (v >= 1024.0 * 1024)
    std::snprintf(buf, sizeof buf, "%.2f MiB", v / (1024.0 * 1024));
  else
    std::snprintf(buf, sizeof buf, "%.2f KiB", v / 1024.0);
  return buf;
}

// The loader: dlopen'ed once per process and kept (unloading Mesa's drivers at exit is a known source of crashes;
// the handle is one small allocation owned by the dynamic linker). LOKAL_VULKAN_LOADER names another file (tests use
// it to check the message of a machine without a loader).
struct Loader {
  void* handle = nullptr;
  PFN_vkGetInstanceProcAddr gipa = nullptr;
  std::string error;
};

const Loader& loader() {
  static Loader l;
  static std::once_flag once;
  std::call_once(once, [] {
    const char* env = std::getenv("LOKAL_VULKAN_LOADER");
    const char* file = env && *env ? env : "libvulkan.so.1";
    l.handle = dlopen(file, RTLD_NOW | RTLD_LOCAL);
    if (!l.handle) {
      l.error = std::string("no Vulkan loader (") + file + ") found; install it (Debian: apt-get install libvulkan1 " +
                "mesa-vulkan-drivers) or use the CPU";
      return;
    }
    l.gipa = reinterpret_cast<PFN_vkGetInstanceProcAddr>(dlsym(l.handle, "vkGetInstanceProcAddr"));
    if (!l.gipa) l.error = std::string("the Vulkan loader ") + file + " has no vkGetInstanceProcAddr";
  });
  return l;
}

std::string version_string(uint32_t v) {
  return std::to_string(VK_API_VERSION_MAJOR(v)) + "." + std::to_string(VK_API_VERSION_MINOR(v)) + "." +
         std::to_string(VK_API_VERSION_PATCH(v));
}

const char* type_word(VkPhysicalDeviceType t) {
  switch (t) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return "discrete";
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return "integrated";
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return "virtual";
    case VK_PHYSICAL_DEVICE_TYPE_CPU: return "cpu";
    default: return "other";
  }
}

// The file names of the shared objects loaded in this process.
std::set<std::string> loaded_objects() {
  std::set<std::string> names;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* out) {
        if (info->dlpi_name && info->dlpi_name[0]) static_cast<std::set<std::string>*>(out)->insert(info->dlpi_name);
        return 0;
      },
      &names);
  return names;
}

// Libraries the Vulkan loader opened (drivers, layers) stay loaded for the rest of the process, as the loader itself
// does: the loader unloads a driver when its last instance is destroyed, and reloading llvmpipe (LLVM) for the next
// instance is slow, unloading Mesa's drivers at run time is a known source of crashes (LLVM's exit-time handlers), and
// LeakSanitizer can no longer see an unloaded driver's global data, so everything the driver keeps there would be
// reported as leaked from "<unknown module>". RTLD_NOLOAD only pins what is already loaded.
void pin_new_objects(const std::set<std::string>& before) {
  for (const std::string& name : loaded_objects())
    if (!before.count(name)) dlopen(name.c_str(), RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

}  // namespace

// A VkInstance with its function table. Destroyed when the last Device (or list_devices call) lets go of it.
class Instance {
 public:
  static std::shared_ptr<Instance> create() {
    const Loader& l = loader();
    if (!l.handle || !l.gipa) throw Error(l.error);
    auto inst = std::shared_ptr<Instance>(new Instance());
    VkFns& f = inst->fns_;
    f.vkGetInstanceProcAddr = l.gipa;
#define LOKAL_VK_LOAD_GLOBAL(name) f.name = reinterpret_cast<PFN_##name>(l.gipa(nullptr, #name));
    LOKAL_VK_GLOBAL_FUNCS(LOKAL_VK_LOAD_GLOBAL)
#undef LOKAL_VK_LOAD_GLOBAL
    if (!f.vkCreateInstance) throw Error("no Vulkan loader (libvulkan.so.1) found: it exports no vkCreateInstance");
    uint32_t loader_version = VK_API_VERSION_1_0;
    if (f.vkEnumerateInstanceVersion) f.vkEnumerateInstanceVersion(&loader_version);
    if (loader_version < VK_API_VERSION_1_1)
      throw Error("the Vulkan loader supports only Vulkan " + version_string(loader_version) + "; lokal needs 1.1");
    auto app = vk_struct<VkApplicationInfo>(VK_STRUCTURE_TYPE_APPLICATION_INFO);
    app.pApplicationName = "lokal";
    app.pEngineName = "lokal";
    app.apiVersion = std::min<uint32_t>(loader_version, VK_API_VERSION_1_3);
    inst->api_ = app.apiVersion;
    const std::set<std::string> before = loaded_objects();
    auto ci = vk_struct<VkInstanceCreateInfo>(VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO);
    ci.pApplicationInfo = &app;
    const VkResult r = f.vkCreateInstance(&ci, nullptr, &inst->instance_);
    if (r == VK_ERROR_INCOMPATIBLE_DRIVER) return inst;  // a loader without any driver: no devices
    check(r, "vkCreateInstance");
#define LOKAL_VK_LOAD_INSTANCE(name)                                                          \
  f.name = reinterpret_cast<PFN_##name>(l.gipa(inst->instance_, #name));                       \
  if (!f.name) throw Error("Vulkan: the loader has no " #name " (Vulkan 1.1 is required)");
    LOKAL_VK_INSTANCE_FUNCS(LOKAL_VK_LOAD_INSTANCE)
#undef LOKAL_VK_LOAD_INSTANCE
    inst->physical_ = inst->enumerate();  // drivers are loaded by now
    pin_new_objects(before);
    return inst;
  }
  ~Instance() {
    if (instance_ != VK_NULL_HANDLE && fns_.vkDestroyInstance) fns_.vkDestroyInstance(instance_, nullptr);
  }
  const VkFns& vk() const { return fns_; }

  const std::vector<VkPhysicalDevice>& physical_devices() const { return physical_; }

  std::vector<VkPhysicalDevice> enumerate() const {
    uint32_t n = 0;
    VkResult r = fns_.vkEnumeratePhysicalDevices(instance_, &n, nullptr);
    if (r == VK_ERROR_INITIALIZATION_FAILED) return {};
    check(r, "vkEnumeratePhysicalDevices");
    std::vector<VkPhysicalDevice> v(n);
    if (n) check(fns_.vkEnumeratePhysicalDevices(instance_, &n, v.data()), "vkEnumeratePhysicalDevices");
    v.resize(n);
    return v;
  }

  DeviceInfo describe(VkPhysicalDevice pd, uint32_t index) const {
    const VkFns& f = fns_;
    DeviceInfo d;
    d.index = index;
    VkPhysicalDeviceProperties base{};
    f.vkGetPhysicalDeviceProperties(pd, &base);
    // What the application may use of the device: the lower of its version and the instance's.
    const uint32_t api = std::min(base.apiVersion, api_);
    bool ext_dot = false, ext_f16i8 = false, ext_driver = false;
    {
      uint32_t n = 0;
      f.vkEnumerateDeviceExtensionProperties(pd, nullptr, &n, nullptr);
      std::vector<VkExtensionProperties> exts(n);
      if (n) f.vkEnumerateDeviceExtensionProperties(pd, nullptr, &n, exts.data());
      for (uint32_t i = 0; i < n; ++i) {
        const std::string e = exts[i].extensionName;
        ext_dot |= e == VK_KHR_SHADER_INTEGER_DOT_PRODUCT_EXTENSION_NAME;
        ext_f16i8 |= e == VK_KHR_SHADER_FLOAT16_INT8_EXTENSION_NAME;
        ext_driver |= e == VK_KHR_DRIVER_PROPERTIES_EXTENSION_NAME;
      }
    }
    const bool has_dot = api >= VK_API_VERSION_1_3 || ext_dot;
    const bool has_f16i8 = api >= VK_API_VERSION_1_2 || ext_f16i8;
    const bool has_driver = api >= VK_API_VERSION_1_2 || ext_driver;

    // Properties: subgroup size, allocation limit, driver name, integer dot product speed.
    auto sub = vk_struct<VkPhysicalDeviceSubgroupProperties>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES);
    auto m3 = vk_struct<VkPhysicalDeviceMaintenance3Properties>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES);
    auto drv = vk_struct<VkPhysicalDeviceDriverProperties>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_DRIVER_PROPERTIES);
    auto dotp = vk_struct<VkPhysicalDeviceShaderIntegerDotProductProperties>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_INTEGER_DOT_PRODUCT_PROPERTIES);
    auto p2 = vk_struct<VkPhysicalDeviceProperties2>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2);
    p2.pNext = &sub;
    sub.pNext = &m3;
    void** tail = &m3.pNext;
    if (has_driver) {
      *tail = &drv;
      tail = &drv.pNext;
    }
    if (has_dot) {
      *tail = &dotp;
      tail = &dotp.pNext;
    }
    f.vkGetPhysicalDeviceProperties2(pd, &p2);

    // Features: fp16 and int8 arithmetic, integer dot product.
    auto f16 = vk_struct<VkPhysicalDeviceShaderFloat16Int8Features>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_FLOAT16_INT8_FEATURES);
    auto dotf = vk_struct<VkPhysicalDeviceShaderIntegerDotProductFeatures>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_INTEGER_DOT_PRODUCT_FEATURES);
    auto f2 = vk_struct<VkPhysicalDeviceFeatures2>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2);
    tail = &f2.pNext;
    if (has_f16i8) {
      *tail = &f16;
      tail = &f16.pNext;
    }
    if (has_dot) {
      *tail = &dotf;
      tail = &dotf.pNext;
    }
    f.vkGetPhysicalDeviceFeatures2(pd, &f2);

    VkPhysicalDeviceMemoryProperties mem{};
    f.vkGetPhysicalDeviceMemoryProperties(pd, &mem);
    for (uint32_t h = 0; h < mem.memoryHeapCount; ++h)
      if (mem.memoryHeaps[h].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) d.device_local_bytes += mem.memoryHeaps[h].size;

    d.name = base.deviceName;
    d.type = type_word(base.deviceType);
    d.api_version = base.apiVersion;
    if (has_driver) {
      d.driver = drv.driverName;
      if (drv.driverInfo[0]) d.driver += std::string(" ") + drv.driverInfo;
    } else {
      d.driver = "driver version " + std::to_string(base.driverVersion);
    }
    d.max_allocation_bytes = m3.maxMemoryAllocationSize;
    d.max_storage_buffer_bytes = base.limits.maxStorageBufferRange;
    // LOKAL_GPU_MAX_BINDING=BYTES lowers it (to try, on any device, what a device with smaller bindings does: the
    // tests cut matrices into parts with it).
    if (const char* e = std::getenv("LOKAL_GPU_MAX_BINDING")) {
      char* end = nullptr;
      const unsigned long long v = std::strtoull(e, &end, 10);
      if (end != e && *end == '\0' && v >= 16) d.max_storage_buffer_bytes = std::min<uint64_t>(d.max_storage_buffer_bytes, v);
    }
    d.fp16 = has_f16i8 && f16.shaderFloat16;
    d.int8 = has_f16i8 && f16.shaderInt8;
    d.int8_dot = has_dot && dotf.shaderIntegerDotProduct;
    d.int8_dot_accelerated = d.int8_dot && dotp.integerDotProduct4x8BitPackedSignedAccelerated;
    d.subgroup_size = sub.subgroupSize;
    d.subgroup_arithmetic = (sub.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) &&
                            (sub.supportedOperations & VK_SUBGROUP_FEATURE_ARITHMETIC_BIT);
    d.int8_dot_by_extension = d.int8_dot && api < VK_API_VERSION_1_3;
    for (int i = 0; i < 3; ++i) {
      d.max_workgroup_size[i] = base.limits.maxComputeWorkGroupSize[i];
      d.max_workgroup_count[i] = base.limits.maxComputeWorkGroupCount[i];
    }
    d.max_workgroup_invocations = base.limits.maxComputeWorkGroupInvocations;
    return d;
  }

 private:
  Instance() = default;
  VkFns fns_;
  uint32_t api_ = VK_API_VERSION_1_1;  // the instance's apiVersion
  VkInstance instance_ = VK_NULL_HANDLE;
  std::vector<VkPhysicalDevice> physical_;
};

std::string DeviceInfo::api_string() const { return version_string(api_version); }

std::vector<DeviceInfo> list_devices() {
  auto inst = Instance::create();
  const auto& pds = inst->physical_devices();
  std::vector<DeviceInfo> out;
  for (uint32_t i = 0; i < pds.size(); ++i) out.push_back(inst->describe(pds[i], i));
  return out;
}

std::vector<DeviceInfo> list_devices(std::string* why) {
  try {
    std::vector<DeviceInfo> devs = list_devices();
    *why = missing_device_reason(0, devs.size());
    return devs;
  } catch (const Error& e) {
    *why = e.what();
    return {};
  }
}

std::string no_device_reason() {
  std::string why;
  list_devices(&why);
  return why;
}

std::string missing_device_reason(uint32_t index, size_t n_devices) {
  if (n_devices == 0) return "no Vulkan device found";
  if (index < n_devices) return "";
  return "Vulkan device " + std::to_string(index) + " does not exist (" + std::to_string(n_devices) + " found: 0.." +
         std::to_string(n_devices - 1) + ")";
}

// ---------------------------------------------------------------------------------------------
// Device
// ---------------------------------------------------------------------------------------------

std::shared_ptr<Device> Device::open(uint32_t index) {
  auto inst = Instance::create();
  const auto& pds = inst->physical_devices();
  if (const std::string why = missing_device_reason(index, pds.size()); !why.empty()) throw Error(why);
  const VkFns& f = inst->vk();
  auto dev = std::shared_ptr<Device>(new Device());
  dev->instance_ = inst;
  dev->physical_ = pds[index];
  dev->info_ = inst->describe(pds[index], index);
  f.vkGetPhysicalDeviceMemoryProperties(dev->physical_, &dev->mem_);

  uint32_t nq = 0;
  f.vkGetPhysicalDeviceQueueFamilyProperties(dev->physical_, &nq, nullptr);
  std::vector<VkQueueFamilyProperties> qf(nq);
  f.vkGetPhysicalDeviceQueueFamilyProperties(dev->physical_, &nq, qf.data());
  // Prefer a compute queue without graphics (an async compute family), else any compute queue.
  int64_t family = -1;
  for (uint32_t i = 0; i < nq; ++i)
    if ((qf[i].queueFlags & VK_QUEUE_COMPUTE_BIT) && !(qf[i].queueFlags & VK_QUEUE_GRAPHICS_BIT)) {
      family = i;
      break;
    }
  for (uint32_t i = 0; family < 0 && i < nq; ++i)
    if (qf[i].queueFlags & VK_QUEUE_COMPUTE_BIT) family = i;
  if (family < 0) throw Error("Vulkan device " + std::to_string(index) + " (" + dev->info_.name + ") has no compute queue");
  dev->queue_family_ = static_cast<uint32_t>(family);

  const float priority = 1.0f;
  auto qci = vk_struct<VkDeviceQueueCreateInfo>(VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO);
  qci.queueFamilyIndex = dev->queue_family_;
  qci.queueCount = 1;
  qci.pQueuePriorities = &priority;
  auto dci = vk_struct<VkDeviceCreateInfo>(VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO);
  dci.queueCreateInfoCount = 1;
  dci.pQueueCreateInfos = &qci;
  // The plain path every Vulkan 1.1 device runs needs no optional feature (weights are read through 32-bit words,
  // arithmetic is f32). The int8 path (gpu/kernels.h: matmul_q8) needs integer dot products: enabled where the device
  // has them (through VK_KHR_shader_integer_dot_product below Vulkan 1.3).
  auto dotf = vk_struct<VkPhysicalDeviceShaderIntegerDotProductFeatures>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_INTEGER_DOT_PRODUCT_FEATURES);
  const char* dot_ext = VK_KHR_SHADER_INTEGER_DOT_PRODUCT_EXTENSION_NAME;
  if (dev->info_.int8_dot) {
    dotf.shaderIntegerDotProduct = VK_TRUE;
    dci.pNext = &dotf;
    if (dev->info_.int8_dot_by_extension) {
      dci.enabledExtensionCount = 1;
      dci.ppEnabledExtensionNames = &dot_ext;
    }
  }
  check(f.vkCreateDevice(dev->physical_, &dci, nullptr, &dev->device_), "vkCreateDevice");
  f.vkGetDeviceQueue(dev->device_, dev->queue_family_, 0, &dev->queue_);

  auto pci = vk_struct<VkCommandPoolCreateInfo>(VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO);
  pci.flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT;
  pci.queueFamilyIndex = dev->queue_family_;
  check(f.vkCreateCommandPool(dev->device_, &pci, nullptr, &dev->pool_), "vkCreateCommandPool");
  return dev;
}

Device::~Device() {
  if (device_ == VK_NULL_HANDLE) return;
  const VkFns& f = vk();
  f.vkDeviceWaitIdle(device_);
  if (pool_ != VK_NULL_HANDLE) f.vkDestroyCommandPool(device_, pool_, nullptr);
  f.vkDestroyDevice(device_, nullptr);
}

const VkFns& Device::vk() const { return instance_->vk(); }

uint32_t Device::memory_type(uint32_t bits, VkMemoryPropertyFlags want, VkMemoryPropertyFlags avoid) const {
  for (int pass = 0; pass < 2; ++pass)
    for (uint32_t i = 0; i < mem_.memoryTypeCount; ++i) {
      const VkMemoryPropertyFlags fl = mem_.memoryTypes[i].propertyFlags;
      if (!(bits & (1u << i)) || (fl & want) != want) continue;
      if (pass == 0 && (fl & avoid)) continue;
      return i;
    }
  return UINT32_MAX;
}

namespace {
// Serial numbers of buffers and pipelines: never reused (Vulkan handles may be), so a recorded command naming one
// can be compared with another (CommandCache).
uint64_t next_id() {
  static std::atomic<uint64_t> n{0};
  return ++n;
}
}  // namespace

Buffer Device::alloc(uint64_t bytes) { return make_buffer(bytes, false); }
Buffer Device::staging(uint64_t bytes) { return make_buffer(bytes, true); }

Buffer Device::make_buffer(uint64_t bytes, bool host_visible) {
  const VkFns& f = vk();
  const uint64_t size = allocation_bytes(bytes);
  auto oom = [&](const std::string& why) {
    return OutOfMemory("GPU out of memory: " + std::to_string(bytes) + " bytes (" + bytes_text(bytes) + ") asked for on " +
                           info_.name + ", " + why,
                       bytes);
  };
  // Sizes the driver must never see (a request beyond maxMemoryAllocationSize is undefined behaviour, not an error).
  if (bytes > (uint64_t(1) << 62) || size > info_.max_allocation_bytes)
    throw oom("whose largest single allocation is " + std::to_string(info_.max_allocation_bytes) + " bytes (" +
              bytes_text(info_.max_allocation_bytes) + ")");
  Buffer b;
  b.dev_ = shared_from_this();
  b.size_ = size;
  b.id_ = next_id();
  auto bci = vk_struct<VkBufferCreateInfo>(VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO);
  bci.size = size;
  bci.usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT;
  bci.sharingMode = VK_SHARING_MODE_EXCLUSIVE;
  VkResult r = f.vkCreateBuffer(device_, &bci, nullptr, &b.buffer_);
  if (r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_OUT_OF_HOST_MEMORY) throw oom(vk_result_name(r));
  check(r, "vkCreateBuffer");
  VkMemoryRequirements req{};
  f.vkGetBufferMemoryRequirements(device_, b.buffer_, &req);
  const VkMemoryPropertyFlags want =
      host_visible ? VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT
                   : VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT;
  uint32_t type = memory_type(req.memoryTypeBits, want, host_visible ? 0 : VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT);
  if (type == UINT32_MAX && !host_visible) type = memory_type(req.memoryTypeBits, 0, 0);
  if (type == UINT32_MAX) throw Error("Vulkan: " + info_.name + " has no suitable memory type for a buffer");
  const uint64_t heap = mem_.memoryHeaps[mem_.memoryTypes[type].heapIndex].size;
  if (req.size > heap)
    throw oom("whose memory heap holds " + std::to_string(heap) + " bytes (" + bytes_text(heap) + ")");
  auto mai = vk_struct<VkMemoryAllocateInfo>(VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO);
  mai.allocationSize = req.size;
  mai.memoryTypeIndex = type;
  r = f.vkAllocateMemory(device_, &mai, nullptr, &b.memory_);
  if (r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_OUT_OF_HOST_MEMORY)
    throw oom("the driver refused it (" + std::string(vk_result_name(r)) + ")");
  check(r, "vkAllocateMemory");
  check(f.vkBindBufferMemory(device_, b.buffer_, b.memory_, 0), "vkBindBufferMemory");
  if (host_visible) check(f.vkMapMemory(device_, b.memory_, 0, VK_WHOLE_SIZE, 0, &b.mapped_), "vkMapMemory");
  return b;
}

void Device::upload(Buffer& dst, const void* src, uint64_t bytes, uint64_t offset) {
  if (offset > dst.size() || bytes > dst.size() - offset)
    throw Error("GPU upload of " + std::to_string(bytes) + " bytes at " + std::to_string(offset) +
                " overruns a buffer of " + std::to_string(dst.size()));
  if (bytes == 0) return;
  Buffer st = staging(bytes);
  std::memcpy(st.mapped(), src, bytes);
  Commands c(*this);
  c.copy(st, dst, bytes, 0, offset);
  c.submit_and_wait();
}

void Device::download(const Buffer& src, void* dst, uint64_t bytes, uint64_t offset) {
  if (offset > src.size() || bytes > src.size() - offset)
    throw Error("GPU download of " + std::to_string(bytes) + " bytes at " + std::to_string(offset) +
                " overruns a buffer of " + std::to_string(src.size()));
  if (bytes == 0) return;
  Buffer st = staging(bytes);
  Commands c(*this);
  c.copy(src, st, bytes, offset, 0);
  c.submit_and_wait();
  std::memcpy(dst, st.mapped(), bytes);
}

Pipeline Device::pipeline(std::span<const uint32_t> spirv, uint32_t n_buffers, uint32_t push_bytes, const char* name) {
  const VkFns& f = vk();
  Pipeline p;
  p.dev_ = shared_from_this();
  p.n_buffers_ = n_buffers;
  p.push_bytes_ = push_bytes;
  p.name_ = name;
  p.id_ = next_id();
  auto smi = vk_struct<VkShaderModuleCreateInfo>(VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO);
  smi.codeSize = spirv.size_bytes();
  smi.pCode = spirv.data();
  check(f.vkCreateShaderModule(device_, &smi, nullptr, &p.module_), "vkCreateShaderModule");

  std::vector<VkDescriptorSetLayoutBinding> binds(n_buffers);
  for (uint32_t i = 0; i < n_buffers; ++i) {
    binds[i].binding = i;
    binds[i].descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
    binds[i].descriptorCount = 1;
    binds[i].stageFlags = VK_SHADER_STAGE_COMPUTE_BIT;
  }
  auto dli = vk_struct<VkDescriptorSetLayoutCreateInfo>(VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO);
  dli.bindingCount = n_buffers;
  dli.pBindings = binds.data();
  check(f.vkCreateDescriptorSetLayout(device_, &dli, nullptr, &p.set_layout_), "vkCreateDescriptorSetLayout");

  VkPushConstantRange pcr{VK_SHADER_STAGE_COMPUTE_BIT, 0, push_bytes};
  auto pli = vk_struct<VkPipelineLayoutCreateInfo>(VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO);
  pli.setLayoutCount = 1;
  pli.pSetLayouts = &p.set_layout_;
  pli.pushConstantRangeCount = push_bytes ? 1 : 0;
  pli.pPushConstantRanges = &pcr;
  check(f.vkCreatePipelineLayout(device_, &pli, nullptr, &p.layout_), "vkCreatePipelineLayout");

  auto cpi = vk_struct<VkComputePipelineCreateInfo>(VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO);
  cpi.stage.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO;
  cpi.stage.stage = VK_SHADER_STAGE_COMPUTE_BIT;
  cpi.stage.module = p.module_;
  cpi.stage.pName = "main";
  cpi.layout = p.layout_;
  const VkResult r = f.vkCreateComputePipelines(device_, VK_NULL_HANDLE, 1, &cpi, nullptr, &p.pipeline_);
  if (r != VK_SUCCESS)
    throw Error(std::string("Vulkan: compiling shader ") + name + " failed (" + vk_result_name(r) + ")");
  return p;
}

// ---------------------------------------------------------------------------------------------
// Buffer, Pipeline
// ---------------------------------------------------------------------------------------------

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    reset();
    dev_ = std::move(o.dev_);
    buffer_ = std::exchange(o.buffer_, VK_NULL_HANDLE);
    memory_ = std::exchange(o.memory_, VK_NULL_HANDLE);
    size_ = std::exchange(o.size_, 0);
    mapped_ = std::exchange(o.mapped_, nullptr);
    id_ = std::exchange(o.id_, 0);
  }
  return *this;
}

void Buffer::reset() {
  if (dev_) {
    const VkFns& f = dev_->vk();
    if (mapped_) f.vkUnmapMemory(dev_->handle(), memory_);
    if (buffer_ != VK_NULL_HANDLE) f.vkDestroyBuffer(dev_->handle(), buffer_, nullptr);
    if (memory_ != VK_NULL_HANDLE) f.vkFreeMemory(dev_->handle(), memory_, nullptr);
  }
  dev_.reset();
  buffer_ = VK_NULL_HANDLE;
  memory_ = VK_NULL_HANDLE;
  size_ = 0;
  mapped_ = nullptr;
  id_ = 0;
}

Pipeline& Pipeline::operator=(Pipeline&& o) noexcept {
  if (this != &o) {
    reset();
    dev_ = std::move(o.dev_);
    module_ = std::exchange(o.module_, VK_NULL_HANDLE);
    set_layout_ = std::exchange(o.set_layout_, VK_NULL_HANDLE);
    layout_ = std::exchange(o.layout_, VK_NULL_HANDLE);
    pipeline_ = std::exchange(o.pipeline_, VK_NULL_HANDLE);
    n_buffers_ = o.n_buffers_;
    push_bytes_ = o.push_bytes_;
    name_ = std::move(o.name_);
    id_ = std::exchange(o.id_, 0);
  }
  return *this;
}

void Pipeline::reset() {
  if (dev_) {
    const VkFns& f = dev_->vk();
    const VkDevice d = dev_->handle();
    if (pipeline_ != VK_NULL_HANDLE) f.vkDestroyPipeline(d, pipeline_, nullptr);
    if (layout_ != VK_NULL_HANDLE) f.vkDestroyPipelineLayout(d, layout_, nullptr);
    if (set_layout_ != VK_NULL_HANDLE) f.vkDestroyDescriptorSetLayout(d, set_layout_, nullptr);
    if (module_ != VK_NULL_HANDLE) f.vkDestroyShaderModule(d, module_, nullptr);
  }
  dev_.reset();
  pipeline_ = VK_NULL_HANDLE;
  layout_ = VK_NULL_HANDLE;
  set_layout_ = VK_NULL_HANDLE;
  module_ = VK_NULL_HANDLE;
  id_ = 0;
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

namespace {
int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
}  // namespace

namespace detail {

bool same_op(const Op& a, const Op& b) {
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Op::kBarrier: return true;
    case Op::kCopy:
      return a.buffer_ids[0] == b.buffer_ids[0] && a.buffer_ids[1] == b.buffer_ids[1] &&
             std::equal(a.copy_region, a.copy_region + 3, b.copy_region);
    case Op::kDispatch:
      return a.pipeline_id == b.pipeline_id && a.n_buffers == b.n_buffers && a.push_bytes == b.push_bytes &&
             a.push_offset == b.push_offset && std::equal(a.groups, a.groups + 3, b.groups) &&
             std::equal(a.buffer_ids, a.buffer_ids + a.n_buffers, b.buffer_ids);
  }
  return false;
}

// A command buffer built from ops (kept with them for the comparison), its descriptor pool and sets.
struct Built {
  std::shared_ptr<Device> dev;
  VkCommandPool pool = VK_NULL_HANDLE;  // the command pool it came from (not owned)
  VkCommandBuffer cmd = VK_NULL_HANDLE;
  VkDescriptorPool sets = VK_NULL_HANDLE;
  std::vector<Op> ops;
  std::vector<uint8_t> push;
  uint64_t dispatches = 0;

  Built(std::shared_ptr<Device> d, VkCommandPool p) : dev(std::move(d)), pool(p) {}
  Built(const Built&) = delete;
  Built& operator=(const Built&) = delete;
  ~Built() {
    const VkFns& f = dev->vk();
    if (cmd != VK_NULL_HANDLE) f.vkFreeCommandBuffers(dev->handle(), pool, 1, &cmd);
    if (sets != VK_NULL_HANDLE) f.vkDestroyDescriptorPool(dev->handle(), sets, nullptr);
  }

  // A command buffer from `pool` holding these commands (moved in), built.
  static std::unique_ptr<Built> from(std::shared_ptr<Device> d, VkCommandPool pool, std::vector<Op>&& o,
                                     std::vector<uint8_t>&& p, bool once) {
    auto b = std::make_unique<Built>(std::move(d), pool);
    b->ops = std::move(o);
    b->push = std::move(p);
    b->build(once);
    return b;
  }

  bool matches(const std::vector<Op>& o, const std::vector<uint8_t>& p) const {
    if (o.size() != ops.size() || p != push) return false;
    for (size_t i = 0; i < o.size(); ++i)
      if (!same_op(o[i], ops[i])) return false;
    return true;
  }

  // Allocates the command buffer and the descriptor sets of every dispatch (one pool, one allocation, one update)
  // and records ops into it. `once`: to be submitted once (VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT).
  void build(bool once) {
    const VkFns& f = dev->vk();
    const VkDevice d = dev->handle();
    auto ai = vk_struct<VkCommandBufferAllocateInfo>(VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO);
    ai.commandPool = pool;
    ai.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
    ai.commandBufferCount = 1;
    check(f.vkAllocateCommandBuffers(d, &ai, &cmd), "vkAllocateCommandBuffers");

    std::vector<VkDescriptorSetLayout> layouts;
    uint32_t n_bindings = 0;
    for (const Op& op : ops)
      if (op.kind == Op::kDispatch) {
        layouts.push_back(op.set_layout);
        n_bindings += op.n_buffers;
      }
    dispatches = layouts.size();
    std::vector<VkDescriptorSet> set_of(layouts.size(), VK_NULL_HANDLE);
    if (!layouts.empty()) {
      VkDescriptorPoolSize ps{VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, std::max<uint32_t>(n_bindings, 1)};
      auto pci = vk_struct<VkDescriptorPoolCreateInfo>(VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO);
      pci.maxSets = static_cast<uint32_t>(layouts.size());
      pci.poolSizeCount = 1;
      pci.pPoolSizes = &ps;
      check(f.vkCreateDescriptorPool(d, &pci, nullptr, &sets), "vkCreateDescriptorPool");
      auto sai = vk_struct<VkDescriptorSetAllocateInfo>(VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO);
      sai.descriptorPool = sets;
      sai.descriptorSetCount = static_cast<uint32_t>(layouts.size());
      sai.pSetLayouts = layouts.data();
      check(f.vkAllocateDescriptorSets(d, &sai, set_of.data()), "vkAllocateDescriptorSets");
      std::vector<VkDescriptorBufferInfo> infos(n_bindings);
      std::vector<VkWriteDescriptorSet> writes(n_bindings);
      size_t w = 0, k = 0;
      for (const Op& op : ops) {
        if (op.kind != Op::kDispatch) continue;
        for (uint32_t i = 0; i < op.n_buffers; ++i, ++w) {
          infos[w] = VkDescriptorBufferInfo{op.buffers[i], 0, VK_WHOLE_SIZE};
          writes[w] = vk_struct<VkWriteDescriptorSet>(VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET);
          writes[w].dstSet = set_of[k];
          writes[w].dstBinding = i;
          writes[w].descriptorCount = 1;
          writes[w].descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
          writes[w].pBufferInfo = &infos[w];
        }
        ++k;
      }
      f.vkUpdateDescriptorSets(d, static_cast<uint32_t>(writes.size()), writes.data(), 0, nullptr);
    }

    auto bi = vk_struct<VkCommandBufferBeginInfo>(VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO);
    bi.flags = once ? VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT : 0;
    check(f.vkBeginCommandBuffer(cmd, &bi), "vkBeginCommandBuffer");
    auto mb = vk_struct<VkMemoryBarrier>(VK_STRUCTURE_TYPE_MEMORY_BARRIER);
    mb.srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT;
    mb.dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_READ_BIT |
                       VK_ACCESS_TRANSFER_WRITE_BIT;
    const VkPipelineStageFlags stages = VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
    VkPipeline bound = VK_NULL_HANDLE;
    size_t k = 0;
    for (const Op& op : ops) {
      switch (op.kind) {
        case Op::kBarrier: f.vkCmdPipelineBarrier(cmd, stages, stages, 0, 1, &mb, 0, nullptr, 0, nullptr); break;
        case Op::kCopy: {
          VkBufferCopy region{op.copy_region[0], op.copy_region[1], op.copy_region[2]};
          f.vkCmdCopyBuffer(cmd, op.buffers[0], op.buffers[1], 1, &region);
          break;
        }
        case Op::kDispatch: {
          if (op.pipeline != bound) f.vkCmdBindPipeline(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, op.pipeline);
          bound = op.pipeline;
          f.vkCmdBindDescriptorSets(cmd, VK_PIPELINE_BIND_POINT_COMPUTE, op.layout, 0, 1, &set_of[k++], 0, nullptr);
          if (op.push_bytes)
            f.vkCmdPushConstants(cmd, op.layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, op.push_bytes,
                                 push.data() + op.push_offset);
          if (op.groups[0] && op.groups[1] && op.groups[2])
            f.vkCmdDispatch(cmd, op.groups[0], op.groups[1], op.groups[2]);
          break;
        }
      }
    }
    check(f.vkEndCommandBuffer(cmd), "vkEndCommandBuffer");
  }
};

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// CommandCache
// ---------------------------------------------------------------------------------------------

CommandCache::CommandCache(Device& dev, size_t capacity) : dev_(dev.shared_from_this()), capacity_(capacity) {
  if (capacity_ == 0) throw Error("GPU command cache: a capacity of 0");
  const char* env = std::getenv("LOKAL_GPU_REUSE");
  enabled_ = !(env && std::string(env) == "0");
  auto pci = vk_struct<VkCommandPoolCreateInfo>(VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO);
  pci.queueFamilyIndex = dev_->queue_family_;
  check(dev_->vk().vkCreateCommandPool(dev_->handle(), &pci, nullptr, &pool_), "vkCreateCommandPool");
}

CommandCache::~CommandCache() {
  entries_.clear();  // their command buffers come from pool_
  dev_->vk().vkDestroyCommandPool(dev_->handle(), pool_, nullptr);
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

Commands::Commands(Device& dev, CommandCache* cache) : dev_(dev.shared_from_this()), cache_(cache), start_ns_(now_ns()) {
  if (cache_ && cache_->dev_ != dev_) throw Error("GPU commands: a command cache of another device");
  if (cache_ && !cache_->entries_.empty()) {  // likely the same commands again: no regrowth while recording
    ops_.reserve(cache_->entries_.front()->ops.size());
    push_.reserve(cache_->entries_.front()->push.size());
  }
}

Commands::~Commands() = default;

void Commands::dispatch(const Pipeline& p, std::initializer_list<const Buffer*> buffers, const void* push,
                        uint32_t push_bytes, uint32_t gx, uint32_t gy, uint32_t gz) {
  if (ended_) throw Error("GPU commands: dispatch after submit");
  if (!p) throw Error("GPU commands: dispatch of an empty pipeline");
  if (buffers.size() != p.n_buffers() || buffers.size() > detail::Op::kMaxBuffers)
    throw Error("GPU kernel " + p.name() + " binds " + std::to_string(p.n_buffers()) + " buffers, given " +
                std::to_string(buffers.size()));
  if (push_bytes != p.push_bytes())
    throw Error("GPU kernel " + p.name() + " takes " + std::to_string(p.push_bytes()) + " bytes of push constants, given " +
                std::to_string(push_bytes));
  const DeviceInfo& info = dev_->info();
  if (gx > info.max_workgroup_count[0] || gy > info.max_workgroup_count[1] || gz > info.max_workgroup_count[2])
    throw Error("GPU kernel " + p.name() + ": dispatch of " + std::to_string(gx) + "x" + std::to_string(gy) + "x" +
                std::to_string(gz) + " workgroups exceeds the device's limit");
  detail::Op op;
  op.kind = detail::Op::kDispatch;
  uint32_t i = 0;
  for (const Buffer* b : buffers) {
    if (!b || !*b) throw Error("GPU kernel " + p.name() + ": buffer " + std::to_string(i) + " is empty");
    if (b->size() > info.max_storage_buffer_bytes)
      throw Error("GPU kernel " + p.name() + ": a buffer of " + std::to_string(b->size()) + " bytes is larger than " +
                  info.name + " lets one shader binding see (" + std::to_string(info.max_storage_buffer_bytes) + ")");
    op.buffers[i] = b->handle();
    op.buffer_ids[i] = b->id();
    ++i;
  }
  op.n_buffers = i;
  op.pipeline = p.handle();
  op.layout = p.layout();
  op.set_layout = p.set_layout();
  op.pipeline_id = p.id();
  op.push_bytes = push_bytes;
  op.push_offset = static_cast<uint32_t>(push_.size());
  if (push_bytes) {
    const auto* pb = static_cast<const uint8_t*>(push);
    push_.insert(push_.end(), pb, pb + push_bytes);
  }
  op.groups[0] = gx;
  op.groups[1] = gy;
  op.groups[2] = gz;
  ops_.push_back(op);
}

void Commands::copy(const Buffer& src, Buffer& dst, uint64_t bytes, uint64_t so, uint64_t doff) {
  if (ended_) throw Error("GPU commands: copy after submit");
  if (so > src.size() || bytes > src.size() - so || doff > dst.size() || bytes > dst.size() - doff)
    throw Error("GPU copy of " + std::to_string(bytes) + " bytes overruns a buffer");
  if (bytes == 0) return;
  detail::Op op;
  op.kind = detail::Op::kCopy;
  op.buffers[0] = src.handle();
  op.buffers[1] = dst.handle();
  op.buffer_ids[0] = src.id();
  op.buffer_ids[1] = dst.id();
  op.copy_region[0] = so;
  op.copy_region[1] = doff;
  op.copy_region[2] = bytes;
  ops_.push_back(op);
}

void Commands::barrier() {
  if (ended_) throw Error("GPU commands: barrier after submit");
  detail::Op op;
  op.kind = detail::Op::kBarrier;
  ops_.push_back(op);
}

void Commands::submit_and_wait() {
  if (ended_) throw Error("GPU commands: submitted twice");
  ended_ = true;
  detail::Built* run = nullptr;
  bool reused = false;
  if (cache_ && cache_->enabled_) {
    auto& es = cache_->entries_;
    for (size_t i = 0; i < es.size() && !run; ++i)
      if (es[i]->matches(ops_, push_)) {
        std::rotate(es.begin(), es.begin() + static_cast<std::ptrdiff_t>(i), es.begin() + static_cast<std::ptrdiff_t>(i) + 1);
        run = es.front().get();
        reused = true;
        ++cache_->hits_;
      }
    if (!run) {
      auto b = detail::Built::from(dev_, cache_->pool_, std::move(ops_), std::move(push_), false);
      if (es.size() >= cache_->capacity_) es.pop_back();
      es.insert(es.begin(), std::move(b));
      run = es.front().get();
      ++cache_->misses_;
    }
  } else {
    own_ = detail::Built::from(dev_, dev_->command_pool(), std::move(ops_), std::move(push_), true);
    run = own_.get();
  }
  const VkFns& f = dev_->vk();
  auto fci = vk_struct<VkFenceCreateInfo>(VK_STRUCTURE_TYPE_FENCE_CREATE_INFO);
  VkFence fence = VK_NULL_HANDLE;
  check(f.vkCreateFence(dev_->handle(), &fci, nullptr, &fence), "vkCreateFence");
  auto si = vk_struct<VkSubmitInfo>(VK_STRUCTURE_TYPE_SUBMIT_INFO);
  si.commandBufferCount = 1;
  si.pCommandBuffers = &run->cmd;
  const int64_t t_submit = now_ns();
  VkResult r = f.vkQueueSubmit(dev_->queue(), 1, &si, fence);
  if (r == VK_SUCCESS) r = f.vkWaitForFences(dev_->handle(), 1, &fence, VK_TRUE, UINT64_MAX);
  f.vkDestroyFence(dev_->handle(), fence, nullptr);
  Device::SubmitStats& st = dev_->stats_;
  ++st.submits;
  st.reused += reused ? 1 : 0;
  st.dispatches += run->dispatches;
  st.host_s += static_cast<double>(t_submit - start_ns_) * 1e-9;
  st.wait_s += static_cast<double>(now_ns() - t_submit) * 1e-9;
  if (r != VK_SUCCESS && cache_ && cache_->enabled_) {
    // Whatever state a failed submission left the command buffer in, it is not submitted again.
    auto& es = cache_->entries_;
    es.erase(std::remove_if(es.begin(), es.end(), [&](const auto& e) { return e.get() == run; }), es.end());
  }
  check(r, "running GPU commands (vkQueueSubmit / vkWaitForFences)");
}

}  // namespace lokal::gpu
