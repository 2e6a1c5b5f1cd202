// What DBeaver and DataGrip ask pgJDBC for when they open a schema: its tables, their columns
// and keys (DatabaseMetaData), then the rows of one table. Printed one fact a line, so that a
// test can compare the answers through the gateway with the answers direct.
import java.sql.*;

public class Reflect {
    public static void main(String[] args) throws Exception {
        String url = args[0], user = args[1], password = args[2], schema = args[3], table = args[4];
        try (Connection c = DriverManager.getConnection(url, user, password)) {
            DatabaseMetaData md = c.getMetaData();
            try (ResultSet rs = md.getTables(null, schema, "%", null)) {
                while (rs.next()) {
                    System.out.println("table " + rs.getString("TABLE_NAME") + " " + rs.getString("TABLE_TYPE"));
                }
            }
            try (ResultSet rs = md.getColumns(null, schema, table, "%")) {
                while (rs.next()) {
                    System.out.println("column " + rs.getString("COLUMN_NAME") + " " + rs.getString("TYPE_NAME")
                        + " " + rs.getInt("NULLABLE"));
                }
            }
            try (ResultSet rs = md.getPrimaryKeys(null, schema, table)) {
                while (rs.next()) {
                    System.out.println("pk " + rs.getString("COLUMN_NAME"));
                }
            }
            try (ResultSet rs = md.getIndexInfo(null, schema, table, false, false)) {
                while (rs.next()) {
                    System.out.println("index " + rs.getString("INDEX_NAME") + " " + rs.getString("COLUMN_NAME"));
                }
            }
            // more runs than pgJDBC's prepareThreshold (5): it switches to a named statement
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT id, name, ssn FROM " + schema + "." + table + " WHERE id >= ? ORDER BY id")) {
                for (int i = 0; i < 7; i++) {
                    ps.setInt(1, 1);
                    try (ResultSet rs = ps.executeQuery()) {
                        while (rs.next()) {
                            if (i == 6) {
                                System.out.println("row " + rs.getInt(1) + " " + rs.getString(2) + " " + rs.getString(3));
                            }
                        }
                    }
                }
            }
        }
    }
}
