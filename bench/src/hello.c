/* hello: prints a line and exits (start to exit). */
#include <stdio.h>
int main(void) { puts("hello"); return 0; }
