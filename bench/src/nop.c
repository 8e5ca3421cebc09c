/* nop: exits at once (the program spawn runs). */
int main(void) { return 0; }
