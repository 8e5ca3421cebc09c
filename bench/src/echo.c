/* echo: a server over stdio. Prints "ready", then answers each line of stdin with
 * "echo: LINE"; exits at end of input. */
#include <stdio.h>

int main(void) {
    char line[4096];
    printf("ready\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        printf("echo: %s", line);
        fflush(stdout);
    }
    return 0;
}
