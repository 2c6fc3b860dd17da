# ORDERD_PLUGIN(NAME, DEFAULT, PKG-MODULES, DESCRIPTION)
# --------------------------------------------------------
# One macro per plugin: --enable-NAME=yes|no|auto.  "auto" builds the plugin
# when pkg-config finds PKG-MODULES; "yes" makes their absence an error.
# Defines NAME_CFLAGS/NAME_LIBS (upper-cased), the automake conditional
# BUILD_PLUGIN_NAME, and a line for the summary printed at the end.
AC_DEFUN([ORDERD_PLUGIN], [
  m4_pushdef([UP], m4_translit([$1], [a-z-], [A-Z_]))
  AC_ARG_ENABLE([$1],
    [AS_HELP_STRING([--enable-$1=yes|no|auto], [$4 (default: $2)])],
    [], [enable_[]m4_translit([$1], [-], [_])=$2])
  orderd_want=$enable_[]m4_translit([$1], [-], [_])
  orderd_have=no
  AS_CASE([$orderd_want],
    [no], [orderd_why="disabled"],
    [yes|auto], [
      m4_ifval([$3], [
        PKG_CHECK_MODULES(UP[]_PLUGIN, [$3], [orderd_have=yes; orderd_why=""],
          [orderd_why="missing: $3"
           AS_IF([test "x$orderd_want" = xyes],
             [AC_MSG_ERROR([--enable-$1=yes but pkg-config did not find: $3])])])
      ], [orderd_have=yes; orderd_why=""])
    ],
    [AC_MSG_ERROR([--enable-$1 takes yes, no or auto, not '$orderd_want'])])
  AM_CONDITIONAL([BUILD_PLUGIN_]UP, [test "x$orderd_have" = xyes])
  orderd_summary="$orderd_summary
    m4_format([%-12s], [$1]) $orderd_have${orderd_why:+ ($orderd_why)}"
  m4_popdef([UP])
])
