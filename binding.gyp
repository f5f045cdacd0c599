{
  "targets": [
    {
      "target_name": "finlora_cpu",
      "sources": [
        "native/cpu/binding.cc",
        "native/cpu/runtime.cc",
        "<!@(find native/cpu/kernels -name '*.cc' | sort)"
      ],
      "include_dirs": ["native/cpu", "native/common"],
      "cflags_cc!": ["-fno-exceptions", "-O2"],
      "cflags_cc": ["-std=c++17", "-O3", "-fno-math-errno", "-Wall", "-Wno-unused-function"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
