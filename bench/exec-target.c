/* The program the exec benchmark runs thousands of times. It does nothing, so what is timed is
   fork, exec and exit; xtask links it statically, so no dynamic loader or library is opened. */
int main(void) { return 0; }
