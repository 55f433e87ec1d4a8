/* A PI futex lock that times out three times: the kernel's futex_lock_pi
 * waits in rt_mutex_wait_proxy_lock, times out, and takes the waiter off
 * in rt_mutex_cleanup_proxy_lock through remove_waiter(), the function the
 * real rtmutex fix changes. Prints PI_TIMEOUTS:N. Built static for the
 * test guest (busybox, no libc). */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>

static pthread_mutex_t m;

static void *waiter(void *arg)
{
	int *timeouts = arg;

	for (int i = 0; i < 3; i++) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 20 * 1000 * 1000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		if (pthread_mutex_timedlock(&m, &ts) == ETIMEDOUT)
			(*timeouts)++;
	}
	return NULL;
}

int main(void)
{
	pthread_mutexattr_t a;
	pthread_t t;
	int timeouts = 0;

	pthread_mutexattr_init(&a);
	pthread_mutexattr_setprotocol(&a, PTHREAD_PRIO_INHERIT);
	pthread_mutex_init(&m, &a);
	pthread_mutex_lock(&m);
	pthread_create(&t, NULL, waiter, &timeouts);
	pthread_join(t, NULL);
	pthread_mutex_unlock(&m);
	printf("PI_TIMEOUTS:%d\n", timeouts);
	return 0;
}
