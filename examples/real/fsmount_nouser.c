/* Whether fsmount(2) mounts a superblock the kernel marked SB_NOUSER
 * (pipefs: internal, never meant to be mounted from user space). The fix
 * in fs/namespace.c (6.1.187-1) makes it fail with EINVAL.
 * Prints FSMOUNT_PIPEFS:mounted or FSMOUNT_PIPEFS:EINVAL (or another errno). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define FSCONFIG_CMD_CREATE 6

int main(void)
{
	int fs = syscall(SYS_fsopen, "pipefs", 0);
	if (fs < 0) {
		printf("FSMOUNT_PIPEFS:fsopen-%s\n", strerror(errno));
		return 1;
	}
	if (syscall(SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, NULL, NULL, 0) < 0) {
		printf("FSMOUNT_PIPEFS:fsconfig-%s\n", strerror(errno));
		return 1;
	}
	int m = syscall(SYS_fsmount, fs, 0, 0);
	if (m >= 0)
		printf("FSMOUNT_PIPEFS:mounted\n");
	else if (errno == EINVAL)
		printf("FSMOUNT_PIPEFS:EINVAL\n");
	else
		printf("FSMOUNT_PIPEFS:%s\n", strerror(errno));
	return 0;
}
