/* test_fault.c -- fault injection and crash tests of fepd (being written). */
#include "fep.h"
#include "test.h"

void test_fault_suite(void)
{
}
