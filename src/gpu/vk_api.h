// gpu/vk_api.h - the Vulkan entry points lokal uses, loaded at run time.
//
// lokal never links libvulkan: the headers come from libvulkan-dev at build time (VK_NO_PROTOTYPES, so they declare
// types only), and the loader libvulkan.so.1 is dlopen'ed when a GPU is first asked for. A binary built with Vulkan
// support therefore runs on machines without a Vulkan loader and says so ("no Vulkan loader (libvulkan.so.1) found").
#pragma once
#ifndef VK_NO_PROTOTYPES
#define VK_NO_PROTOTYPES
#endif
#include <vulkan/vulkan.h>

namespace lokal::gpu {

// X-macros: (name). Global functions come from vkGetInstanceProcAddr(nullptr, ...), the others from
// vkGetInstanceProcAddr(instance, ...) (device functions then go through the loader's trampolines, which is fine for
// a compute-only engine that records few commands).
#define LOKAL_VK_GLOBAL_FUNCS(X) \
  X(vkCreateInstance)            \
  X(vkEnumerateInstanceVersion)

#define LOKAL_VK_INSTANCE_FUNCS(X)                \
  X(vkDestroyInstance)                            \
  X(vkEnumeratePhysicalDevices)                   \
  X(vkGetPhysicalDeviceProperties)                \
  X(vkGetPhysicalDeviceProperties2)               \
  X(vkGetPhysicalDeviceFeatures2)                 \
  X(vkGetPhysicalDeviceMemoryProperties)          \
  X(vkGetPhysicalDeviceQueueFamilyProperties)     \
  X(vkEnumerateDeviceExtensionProperties)         \
  X(vkCreateDevice)                               \
  X(vkDestroyDevice)                              \
  X(vkGetDeviceQueue)                             \
  X(vkDeviceWaitIdle)                             \
  X(vkCreateBuffer)                               \
  X(vkDestroyBuffer)                              \
  X(vkGetBufferMemoryRequirements)                \
  X(vkAllocateMemory)                             \
  X(vkFreeMemory)                                 \
  X(vkBindBufferMemory)                           \
  X(vkMapMemory)                                  \
  X(vkUnmapMemory)                                \
  X(vkCreateCommandPool)                          \
  X(vkDestroyCommandPool)                         \
  X(vkAllocateCommandBuffers)                     \
  X(vkFreeCommandBuffers)                         \
  X(vkBeginCommandBuffer)                         \
  X(vkEndCommandBuffer)                           \
  X(vkCmdCopyBuffer)                              \
  X(vkCmdPipelineBarrier)                         \
  X(vkCmdBindPipeline)                            \
  X(vkCmdBindDescriptorSets)                      \
  X(vkCmdPushConstants)                           \
  X(vkCmdDispatch)                                \
  X(vkQueueSubmit)                                \
  X(vkCreateFence)                                \
  X(vkDestroyFence)                               \
  X(vkWaitForFences)                              \
  X(vkCreateShaderModule)                         \
  X(vkDestroyShaderModule)                        \
  X(vkCreateDescriptorSetLayout)                  \
  X(vkDestroyDescriptorSetLayout)                 \
  X(vkCreatePipelineLayout)                       \
  X(vkDestroyPipelineLayout)                      \
  X(vkCreateComputePipelines)                     \
  X(vkDestroyPipeline)                            \
  X(vkCreateDescriptorPool)                       \
  X(vkDestroyDescriptorPool)                      \
  X(vkAllocateDescriptorSets)                     \
  X(vkUpdateDescriptorSets)

// The loaded function pointers (members named like the functions).
struct VkFns {
  PFN_vkGetInstanceProcAddr vkGetInstanceProcAddr = nullptr;
#define LOKAL_VK_MEMBER(name) PFN_##name name = nullptr;
  LOKAL_VK_GLOBAL_FUNCS(LOKAL_VK_MEMBER)
  LOKAL_VK_INSTANCE_FUNCS(LOKAL_VK_MEMBER)
#undef LOKAL_VK_MEMBER
};

// "VK_ERROR_OUT_OF_DEVICE_MEMORY" etc. for messages.
const char* vk_result_name(VkResult r);

}  // namespace lokal::gpu
