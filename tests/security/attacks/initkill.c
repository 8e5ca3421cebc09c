/* Signals to init and to many processes at once, run as process 1 of its PID namespace:
 * kill(2) lets no process of the namespace kill init (it gets only the signals it has a
 * handler for), and kill(0) / kill(-1) / kill(-pgid) reach exactly the processes they name. */
#include "attack.h"
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t got_usr1;

static void on_usr1(int sig) { got_usr1 = 1; }

static void nap(void) {
    struct timespec ts = {0, 100 * 1000 * 1000};
    nanosleep(&ts, 0);
}

static pid_t sleeper(void) {
    pid_t pid = fork();
    if (pid == 0) {
        for (;;)
            pause();
    }
    return pid;
}

static int term_signal(pid_t pid) {
    int status;
    if (waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFSIGNALED(status) ? WTERMSIG(status) : 0;
}

int main(void) {
    if (getpid() != 1) {
        printf("not ok pid-1: run me as init (pid %d)\n", getpid());
        return 1;
    }
    signal(SIGUSR1, on_usr1);
    pid_t child = fork();
    if (child == 0) {
        int r1 = kill(1, SIGKILL), r2 = kill(1, SIGTERM), r3 = kill(1, SIGUSR1);
        _exit(r1 == 0 && r2 == 0 && r3 == 0 ? 0 : 1);
    }
    int status;
    waitpid(child, &status, 0);
    nap();
    CHECK("init-survives-sigkill-and-sigterm", WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "the child's kill calls failed");
    CHECK("init-gets-handled-signals", got_usr1, "SIGUSR1, which init handles, did not arrive");

    /* kill(-1) from a child: every process but init and the caller. */
    pid_t s1 = sleeper(), s2 = sleeper();
    child = fork();
    if (child == 0) {
        signal(SIGTERM, SIG_DFL);
        _exit(kill(-1, SIGTERM) == 0 ? 0 : 1);
    }
    waitpid(child, &status, 0);
    CHECK("kill-minus-1-spares-the-caller", WIFEXITED(status) && WEXITSTATUS(status) == 0, "status %#x", status);
    CHECK("kill-minus-1-reaches-the-rest", term_signal(s1) == SIGTERM && term_signal(s2) == SIGTERM,
          "the other processes were not signalled");

    /* kill(0) from a child leading its own group: the group, and not init's. */
    pid_t other = sleeper();
    child = fork();
    if (child == 0) {
        setpgid(0, 0);
        pid_t member = sleeper();  /* in the child's new group */
        kill(0, SIGTERM);
        _exit(member > 0 ? 3 : 4);  /* not reached: SIGTERM ends the child too */
    }
    CHECK("kill-0-reaches-its-group", term_signal(child) == SIGTERM, "the caller's group was not signalled");
    nap();
    CHECK("kill-0-spares-other-groups", waitpid(other, &status, WNOHANG) == 0, "a process of init's group ended");

    /* kill(-pgid): that group only. */
    pid_t leader = fork();
    if (leader == 0) {
        setpgid(0, 0);
        for (;;)
            pause();
    }
    setpgid(leader, leader);
    nap();
    CHECK("kill-minus-pgid", kill(-leader, SIGTERM) == 0 && term_signal(leader) == SIGTERM, "group %d", leader);
    errno = 0;
    CHECK("kill-empty-group", kill(-30000, SIGTERM) != 0 && errno == ESRCH, "kill of an empty group");
    kill(other, SIGKILL);
    term_signal(other);
    return DONE();
}
