#include <cstdio>
int main() { std::puts("lokal"); return 0; }
