// Makes the shared library importable as retinaface_ext._C. Importing it runs
// the static TORCH_LIBRARY registrations; the module itself is empty. Only the
// Python build compiles this file (the CMake/libtorch build has no Python).
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "retinaface_ext compiled ops", -1, nullptr};
  return PyModule_Create(&module_def);
}
}
