/* test_fep.c -- tests of fep (being written). */
#include "fep.h"
#include "test.h"

void test_fep_suite(void)
{
}
